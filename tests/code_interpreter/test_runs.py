"""The code interpreter in runs, end to end: official SDK (strict validation), scripted model, real sandbox."""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
import zlib
from typing import Any

import openai
import pytest
from openai import AssistantEventHandler
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import ImageFile, Message, Text
from openai.types.beta.threads.runs import RunStep, ToolCall, ToolCallDelta

from tests.code_interpreter.conftest import find_host_file, new_thread, run_code, sandbox_roots
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import LoomServer
from tests.support.wait import wait_for

CSV = b"city,visits\nParis,3\nLyon,4\nNice,5\n"
CHART = (
    "import matplotlib\n"
    "import matplotlib.pyplot as plt\n"
    "plt.figure(figsize=(3, 2))\n"
    "plt.plot([1, 2, 3], [3, 1, 2])\n"
    "plt.title('visits')\n"
    "plt.show()\n"
)


def png_size(data: bytes) -> tuple[int, int]:
    """Check a PNG completely (signature, every chunk's CRC, IHDR, the inflated image data's size) with
    zlib and struct alone; returns (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color, _comp, _filter, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and interlace == 0
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(pixels) == height * (1 + width * channels)
    return width, height


# ------------------------------------------------------------------------------------------- state


def test_state_kept_across_runs_of_a_thread(client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str) -> None:
    thread = new_thread(client)
    first = run_code(client, upstream, thread, assistant_id, "secret_number = 6 * 7\nprint('set')")
    assert first.logs == "set\n"
    assert first.tool_message["content"] == "set\n"
    second = run_code(client, upstream, thread, assistant_id, "print(secret_number + 1)")
    assert second.logs == "43\n"
    assert second.tool_message["content"] == "43\n"  # what the model is told in the next request
    # Another thread has a session of its own.
    other = run_code(client, upstream, new_thread(client), assistant_id, "print('secret_number' in globals())")
    assert other.logs == "False\n"


def test_deleting_the_thread_ends_its_session(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str, ci_server: LoomServer
) -> None:
    thread = new_thread(client)
    marker = f"marker-{uuid.uuid4().hex}.txt"
    run_code(client, upstream, thread, assistant_id, f"kept = 'old'\nopen('/mnt/data/{marker}', 'w').write('x')")
    roots = sandbox_roots(ci_server)
    assert find_host_file(marker, roots), "the session's /mnt/data was not found on the host"
    assert client.beta.threads.delete(thread).deleted
    # The session's kernel and files are gone with the thread.
    wait_for(lambda: not find_host_file(marker, roots), what=f"{marker} to leave the host")
    fresh = new_thread(client)
    r = run_code(client, upstream, fresh, assistant_id, f"import os\nprint(os.path.exists('/mnt/data/{marker}'))\nkept")
    assert r.logs.startswith("False\n") and "NameError" in r.logs, r.logs


# --------------------------------------------------------------------------------------- input files


@pytest.mark.parametrize("where", ["assistant", "thread", "attachment"])
def test_csv_given_to_the_code(client: openai.OpenAI, upstream: FakeUpstream, where: str) -> None:
    name = f"visits-{where}.csv"
    f = client.files.create(file=(name, io.BytesIO(CSV)), purpose="assistants")
    resources = {"code_interpreter": {"file_ids": [f.id]}}
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "code_interpreter"}],
        tool_resources=resources if where == "assistant" else None,  # type: ignore[arg-type]
    )
    message: dict[str, Any] = {"role": "user", "content": "Total visits?"}
    if where == "attachment":
        message["attachments"] = [{"file_id": f.id, "tools": [{"type": "code_interpreter"}]}]
    thread = client.beta.threads.create(
        messages=[message],  # type: ignore[list-item]
        tool_resources=resources if where == "thread" else None,  # type: ignore[arg-type]
    )
    code = f"import pandas as pd\ndf = pd.read_csv('/mnt/data/{name}')\nprint(df.visits.sum(), len(df))"
    r = run_code(client, upstream, thread.id, assistant.id, code, reply="12 visits.")
    assert r.logs == "12 3\n", r.logs
    assert "12 3" in r.tool_message["content"]
    messages = client.beta.threads.messages.list(thread.id, order="asc").data
    assert messages[-1].content[0].type == "text"
    assert messages[-1].content[0].text.value == "12 visits."
    # The file was not turned into an output File of its own.
    assert not [o for o in r.call.code_interpreter.outputs if o.type == "image"]


# ------------------------------------------------------------------------------------ output files


def test_chart_is_an_image_output_and_an_image_file_block(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str
) -> None:
    thread = new_thread(client)
    r = run_code(client, upstream, thread, assistant_id, CHART, reply="Here is the chart.")
    images = [o for o in r.call.code_interpreter.outputs if o.type == "image"]
    assert len(images) == 1, r.call.code_interpreter.outputs
    file_id = images[0].image.file_id
    # The model is told an image was shown, not given bytes.
    assert file_id in r.tool_message["content"] and "PNG" not in r.tool_message["content"]
    message = client.beta.threads.messages.list(thread, order="desc", limit=1).data[0]
    assert message.run_id == r.run.id
    kinds = [block.type for block in message.content]
    assert kinds == ["text", "image_file"], kinds
    block = message.content[1]
    assert block.type == "image_file" and block.image_file.file_id == file_id
    meta = client.files.retrieve(file_id)
    assert meta.purpose == "assistants_output" and meta.filename.endswith(".png")
    data = client.files.content(file_id).read()
    assert len(data) == meta.bytes
    width, height = png_size(data)
    assert width > 50 and height > 50


def test_written_file_is_a_file_path_annotation(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str
) -> None:
    thread = new_thread(client)
    payload = "name,n\n" + "".join(f"row{i},{i * i}\n" for i in range(200))
    code = f"open('/mnt/data/report.csv', 'w').write({payload!r})\nprint('written')"
    link = "sandbox:/mnt/data/report.csv"
    reply = f"Your report: [report.csv]({link}) is ready."
    r = run_code(client, upstream, thread, assistant_id, code, reply=reply)
    assert "sandbox:/mnt/data/report.csv" in r.tool_message["content"]
    message = client.beta.threads.messages.list(thread, order="desc", limit=1).data[0]
    text = message.content[0]
    assert text.type == "text" and text.text.value == reply
    (annotation,) = text.text.annotations
    assert annotation.type == "file_path"
    assert annotation.text == link
    assert text.text.value[annotation.start_index : annotation.end_index] == link
    assert client.files.content(annotation.file_path.file_id).read() == payload.encode()
    assert client.files.retrieve(annotation.file_path.file_id).filename == "report.csv"


# ------------------------------------------------------------------------------------------ errors


def test_errors_in_the_code_are_outputs(client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str) -> None:
    thread = new_thread(client)
    r = run_code(client, upstream, thread, assistant_id, "print('before')\n1 / 0", reply="It failed.")
    assert r.logs.startswith("before\n")
    assert "Traceback" in r.logs and "ZeroDivisionError: division by zero" in r.logs
    assert "ZeroDivisionError: division by zero" in r.tool_message["content"]
    r = run_code(client, upstream, thread, assistant_id, "def broken(:\n    pass")
    assert "SyntaxError" in r.logs and "SyntaxError" in r.tool_message["content"]
    r = run_code(client, upstream, thread, assistant_id, "import no_such_module_here")
    assert "ModuleNotFoundError" in r.tool_message["content"]
    r = run_code(client, upstream, thread, assistant_id, "print('still fine')")
    assert r.logs == "still fine\n"


def test_raw_code_instead_of_json_arguments(client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str) -> None:
    """Some models send the code itself as the arguments: it runs, and the input is shown whole."""
    thread = new_thread(client)
    upstream.push(
        Turn.calls(ToolCallSpec("code_interpreter", "print('raw ' * 2)"), arguments_chunk_size=4),
        Turn.reply("ok"),
    )
    handler = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread, assistant_id=assistant_id, event_handler=handler) as s:
        s.until_done()
    assert handler.current_run is not None and handler.current_run.status == "completed"
    assert handler.inputs == ["print('raw ' * 2)"]
    # (The SDK calls on_tool_call_done again at each later step and run event: it never forgets the call.)
    done = next(p for name, p in handler.events if name == "tool_call_done")
    assert done.code_interpreter.input == "print('raw ' * 2)"
    assert done.code_interpreter.outputs[0].logs == "raw raw \n"


# --------------------------------------------------------------------------------------- streaming


class Recorder(AssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, Any]] = []
        self.inputs: list[str] = []
        self.delta_ids: list[str] = []

    def on_tool_call_created(self, tool_call: ToolCall) -> None:
        self.events.append(("tool_call_created", tool_call))

    def on_tool_call_delta(self, delta: ToolCallDelta, snapshot: ToolCall) -> None:
        if delta.type == "code_interpreter" and delta.code_interpreter is not None:
            if delta.code_interpreter.input:
                self.inputs.append(delta.code_interpreter.input)
                self.events.append(("input", delta.code_interpreter.input))
            if delta.code_interpreter.outputs:
                self.events.append(("outputs", [o.type for o in delta.code_interpreter.outputs]))

    def on_event(self, event: AssistantStreamEvent) -> None:
        # Every id a step delta carries, as sent on the wire (the SDK consumes the first one itself).
        if event.event == "thread.run.step.delta" and event.data.delta.step_details is not None:
            details = event.data.delta.step_details
            if details.type == "tool_calls":
                self.delta_ids += [c.id for c in details.tool_calls or [] if c.id]

    def on_tool_call_done(self, tool_call: ToolCall) -> None:
        self.events.append(("tool_call_done", tool_call))

    def on_run_step_done(self, run_step: RunStep) -> None:
        self.events.append(("step_done", run_step.step_details.type))

    def on_image_file_done(self, image_file: ImageFile) -> None:
        self.events.append(("image_file_done", image_file.file_id))

    def on_text_created(self, text: Text) -> None:
        self.events.append(("text_created", None))

    def on_text_done(self, text: Text) -> None:
        self.events.append(("text_done", text.value))

    def on_message_done(self, message: Message) -> None:
        self.events.append(("message_done", [b.type for b in message.content]))


def test_streaming_callbacks_in_order(client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str) -> None:
    thread = new_thread(client)
    # Escapes, quotes, backslashes and characters outside the BMP (a surrogate pair in the JSON): cut in
    # 3-character fragments, they are split in every possible place.
    code = 'label = "caf\\u00e9 \\"q\\" 😀 €"\nprint(label, "\\\\", len(label))\n' + CHART
    arguments = json.dumps({"code": code})  # ensure_ascii: 😀 is \ud83d\ude00
    assert "\\ud83d\\ude00" in arguments
    upstream.push(
        Turn.calls(ToolCallSpec("code_interpreter", arguments), arguments_chunk_size=3),
        Turn.reply("Chart above.", chunk_size=4),
    )
    handler = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread, assistant_id=assistant_id, event_handler=handler) as s:
        s.until_done()
    run = handler.current_run
    assert run is not None and run.status == "completed", run
    names = [name for name, _ in handler.events]
    # The input streamed in pieces as the model wrote it, and the pieces make the code.
    assert len(handler.inputs) > 10, handler.inputs
    assert "".join(handler.inputs) == code
    # Sent once: the SDK concatenates strings, so a repeated id would read "call_xcall_x".
    assert len(handler.delta_ids) == 1
    created = names.index("tool_call_created")
    first_output = names.index("outputs")
    done = names.index("tool_call_done")
    inputs_at = [i for i, n in enumerate(names) if n == "input"]
    assert created < inputs_at[0] and inputs_at[-1] < first_output < done
    call = handler.events[done][1]
    assert call.id == handler.delta_ids[0] == handler.events[created][1].id and call.type == "code_interpreter"
    assert call.id.count("call_") == 1
    assert call.code_interpreter.input == code
    expected_label = 'café "q" 😀 €'
    logs = [o for o in call.code_interpreter.outputs if o.type == "logs"]
    assert logs and logs[0].logs == f"{expected_label} \\ {len(expected_label)}\n"
    image_ids = [o.image.file_id for o in call.code_interpreter.outputs if o.type == "image"]
    assert len(image_ids) == 1
    # Then the tool step ends, the message streams its text, and its image block.
    after = names[done:]
    assert after.index("step_done") < after.index("text_created") < after.index("text_done")
    assert ("image_file_done", image_ids[0]) in handler.events
    assert ("text_done", "Chart above.") in handler.events
    assert ("message_done", ["text", "image_file"]) in handler.events
    assert names.count("step_done") == 2  # the tool call step, the message step
    # The stored step says the same as the stream.
    steps = client.beta.threads.runs.steps.list(thread_id=thread, run_id=run.id, order="asc").data
    stored = steps[0].step_details
    assert stored.type == "tool_calls"
    assert stored.tool_calls[0].id == call.id
    assert stored.tool_calls[0].code_interpreter.input == code  # type: ignore[union-attr]


def test_parallel_calls_stream_each_input(client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str) -> None:
    """Two calls in one model turn: each gets its own index, id and input; both run, in order."""
    thread = new_thread(client)
    first, second = "a = 20\nprint('first', a)", "print('second', a + 1)"
    upstream.push(
        Turn.calls(
            ToolCallSpec("code_interpreter", {"code": first}),
            ToolCallSpec("code_interpreter", {"code": second}),
            arguments_chunk_size=5,
        ),
        Turn.reply("Both ran."),
    )
    handler = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread, assistant_id=assistant_id, event_handler=handler) as s:
        s.until_done()
    assert handler.current_run is not None and handler.current_run.status == "completed"
    created = [p for name, p in handler.events if name == "tool_call_created"]
    assert [c.index for c in created] == [0, 1]
    assert len(handler.delta_ids) == 2 and len(set(handler.delta_ids)) == 2
    step = client.beta.threads.runs.steps.list(thread_id=thread, run_id=handler.current_run.id, order="asc").data[0]
    assert step.step_details.type == "tool_calls"
    calls = step.step_details.tool_calls
    assert [c.id for c in calls] == handler.delta_ids
    assert [c.code_interpreter.input for c in calls] == [first, second]  # type: ignore[union-attr]
    logs = [c.code_interpreter.outputs[0].logs for c in calls]  # type: ignore[union-attr]
    assert logs == ["first 20\n", "second 21\n"]
    # What the SDK accumulated from the stream says the same: nothing was repeated or lost.
    done: dict[str, Any] = {}
    for name, payload in handler.events:
        if name == "tool_call_done":
            done.setdefault(payload.id, payload)
    streamed = [(c.id, c.code_interpreter.input, c.code_interpreter.outputs[0].logs) for c in done.values()]
    assert streamed == [(c.id, c.code_interpreter.input, log) for c, log in zip(calls, logs, strict=True)]  # type: ignore[union-attr]


def test_code_interpreter_and_a_function_in_one_turn(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """The function call written after the code is shown after the code has run (no index revisited),
    then the run waits for its output, and goes on with it."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "code_interpreter"}, weather],  # type: ignore[list-item]
    )
    thread = new_thread(client)
    upstream.push(
        Turn.calls(
            ToolCallSpec("code_interpreter", {"code": "print(2 ** 10)"}),
            ToolCallSpec("get_weather", {"city": "Paris"}),
            arguments_chunk_size=4,
        ),
        Turn.reply("1024, and sunny."),
    )
    handler = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread, assistant_id=assistant.id, event_handler=handler) as s:
        s.until_done()
    run = handler.current_run
    assert run is not None and run.status == "requires_action"
    created = [p for name, p in handler.events if name == "tool_call_created"]
    assert [(c.index, c.type) for c in created] == [(0, "code_interpreter"), (1, "function")]
    (call,) = run.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    step = client.beta.threads.runs.steps.list(thread_id=thread, run_id=run.id).data[0]
    assert step.step_details.type == "tool_calls"
    code_call = step.step_details.tool_calls[0]
    assert code_call.type == "code_interpreter" and code_call.code_interpreter.outputs[0].logs == "1024\n"  # type: ignore[union-attr]
    handler = Recorder()
    with client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}],
        event_handler=handler,
    ) as s:
        s.until_done()
    assert handler.current_run is not None and handler.current_run.status == "completed"
    assert ("text_done", "1024, and sunny.") in handler.events
    tool_messages = [m for m in upstream.requests[-1].messages if m.get("role") == "tool"]
    assert [m["content"] for m in tool_messages] == ["1024\n", "sunny"]


def test_cancel_between_two_code_calls_ends_cancelled(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str
) -> None:
    """A cancel that arrives while the first of two calls runs: the second never runs, and the run ends
    `cancelled` with its tool step cancelled (it must not stay `cancelling`)."""
    thread = new_thread(client)
    upstream.push(
        Turn.calls(
            ToolCallSpec("code_interpreter", {"code": "import time; time.sleep(2); print('first done')"}),
            ToolCallSpec("code_interpreter", {"code": "print('second ran')"}),
        ),
        Turn.reply("not reached"),
    )
    run = client.beta.threads.runs.create(thread_id=thread, assistant_id=assistant_id)
    wait_for(lambda: client.beta.threads.runs.steps.list(thread_id=thread, run_id=run.id).data, 30, "the tool step")
    time.sleep(0.5)
    assert client.beta.threads.runs.cancel(thread_id=thread, run_id=run.id).status == "cancelling"
    current = wait_for(
        lambda: (r := client.beta.threads.runs.retrieve(thread_id=thread, run_id=run.id)).status != "cancelling" and r,
        30,
        "the run to leave cancelling",
    )
    assert current.status == "cancelled"
    step = client.beta.threads.runs.steps.list(thread_id=thread, run_id=run.id).data[0]
    assert step.status == "cancelled"
    assert len(upstream.chat_requests) == 1, "no model call after the cancel"
