"""Memory strategies: how a thread's messages become what the model is sent (issue 12, section 3).

One protocol (`loom.memory.protocol.MemoryStrategy`): given a `MemoryContext` — the thread, the run,
the thread's messages and a token budget — return the messages to send. The built-ins (`auto`,
`last_messages`, `summary`, `recall`) implement it, and so do plug-ins: Python entry points in the
group `loom.memory`. A run picks its strategy (`loom.memory.registry.strategy_name`) from its
`truncation_strategy.type`, else the thread's or the assistant's metadata key `loom_memory`.
"""

from loom.memory.protocol import MemoryContext, MemoryFailure, MemoryStrategy, ThreadMessage

__all__ = ["MemoryContext", "MemoryFailure", "MemoryStrategy", "ThreadMessage"]
