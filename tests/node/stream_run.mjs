// openai-node against Loom: stream a run that calls a function, submit the output with a stream,
// and print what was seen as one JSON line. The process must end by itself after `[DONE]`:
// nothing here closes sockets or calls process.exit.
//
// Usage: node stream_run.mjs <base_url> <api_key>
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

const assistant = await client.beta.assistants.create({
  model: "gpt-4o",
  instructions: "Use the tool.",
  tools: [
    {
      type: "function",
      function: {
        name: "get_weather",
        parameters: { type: "object", properties: { city: { type: "string" } } },
      },
    },
  ],
});
const thread = await client.beta.threads.create({
  messages: [{ role: "user", content: "Weather in Paris?" }],
});

const firstEvents = [];
let toolCallCreated = null;
let argumentsSeen = "";
const first = client.beta.threads.runs
  .stream(thread.id, { assistant_id: assistant.id })
  .on("event", (e) => firstEvents.push(e.event))
  .on("toolCallCreated", (call) => {
    toolCallCreated = { id: call.id, type: call.type, name: call.function?.name };
  })
  .on("toolCallDelta", (delta) => {
    argumentsSeen += delta.function?.arguments ?? "";
  });
const waiting = await first.finalRun();
const calls = waiting.required_action?.submit_tool_outputs.tool_calls ?? [];

const secondEvents = [];
let text = "";
const second = client.beta.threads.runs
  .submitToolOutputsStream(waiting.id, {
    thread_id: thread.id,
    tool_outputs: calls.map((c) => ({ tool_call_id: c.id, output: "sunny" })),
  })
  .on("event", (e) => secondEvents.push(e.event))
  .on("textDelta", (delta) => {
    text += delta.value ?? "";
  });
const finalRun = await second.finalRun();
const finalMessages = await second.finalMessages();

// A raw `stream: true` iteration must also end on its own.
const raw = await client.beta.threads.runs.create(thread.id, { assistant_id: assistant.id, stream: true });
const rawEvents = [];
for await (const event of raw) rawEvents.push(event.event);

console.log(
  JSON.stringify({
    firstEvents,
    waitingStatus: waiting.status,
    calls: calls.map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })),
    toolCallCreated,
    argumentsSeen,
    secondEvents,
    finalStatus: finalRun.status,
    text,
    finalMessages: finalMessages.map((m) => m.content.map((c) => (c.type === "text" ? c.text.value : c.type))),
    rawEvents,
  }),
);
