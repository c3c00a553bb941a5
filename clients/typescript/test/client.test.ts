// Run against a real parakeet-server. Environment (set by tests/test_client_typescript.py):
//   PARAKEET_URL       ws://127.0.0.1:PORT/
//   PARAKEET_WAV       a 16 kHz mono pcm16 WAV file
//   PARAKEET_EXPECTED  the transcript `parakeet-server transcribe` gives for it
//   PARAKEET_SLOTS     the server's --max-num-streams
//   PARAKEET_API_KEY   the server's --api-key
//   PARAKEET_SHORT_URL a server like it with --max-stream-seconds 1
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  decodeWav,
  floatToPcm16,
  parseMessage,
  ProtocolViolationError,
  ServerError,
  StreamClosedError,
  StreamingClient,
  StreamMessage,
  transcribe,
} from "../src/index.js";

const env = (name: string): string => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set; run through tests/test_client_typescript.py`);
  return value;
};
const URL_ = env("PARAKEET_URL");
const EXPECTED = env("PARAKEET_EXPECTED");
const SLOTS = Number(env("PARAKEET_SLOTS"));
const apiKey = env("PARAKEET_API_KEY");
const wav = decodeWav(new Uint8Array(readFileSync(env("PARAKEET_WAV"))));

test("parseMessage ignores unknown fields and types, rejects malformed", () => {
  const hello = parseMessage('{"type":"hello","stream_id":1,"sample_rate":16000,"protocol":2,"new":true}');
  assert.equal(hello?.type, "hello");
  assert.equal(parseMessage('{"type":"from_the_future"}'), null);
  assert.deepEqual(parseMessage('{"type":"error","message":"full"}'), {
    type: "error",
    code: "error",
    message: "full",
    fatal: false,
  });
  assert.throws(() => parseMessage("not json"), ProtocolViolationError);
  assert.throws(() => parseMessage('{"type":"result","text":"x"}'), ProtocolViolationError);
});

test("floatToPcm16 is little-endian, rounded and clipped", () => {
  const bytes = floatToPcm16(new Float32Array([0, 0.5, -1, 1.5, -2, 1 / 32768]));
  const view = new DataView(bytes.buffer);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((i) => view.getInt16(i * 2, true)), [0, 16384, -32768, 32767, -32768, 1]);
});

test("decodeWav reads the test file", () => {
  assert.equal(wav.sampleRate, 16000);
  assert.ok(wav.samples.length > 16000);
});

for (const binary of [true, false]) {
  test(`transcribe (binary=${binary}) gives the offline transcript`, async () => {
    const seen: StreamMessage[] = [];
    const t = await transcribe(URL_, wav.samples, { apiKey, speed: 0, binary, onMessage: (m) => seen.push(m) });
    assert.equal(t.text, EXPECTED);
    assert.equal(t.hello.protocol, 2);
    assert.ok(t.final.is_final);
    const partials = seen.filter((m) => m.type === "result" && !m.is_final);
    assert.ok(partials.length > 0);
    for (const p of partials) assert.ok(EXPECTED.startsWith((p as { text: string }).text));
    assert.deepEqual(t.utterances, seen.filter((m) => m.type === "eou"));
  });
}

test("paced streaming with messages() and progress", async () => {
  const client = await StreamingClient.connect(URL_, { apiKey });
  const progress: number[] = [];
  const started = Date.now();
  const sending = client.stream(wav.samples, { speed: 4, chunkMs: 200, onProgress: (s) => progress.push(s) });
  let last: StreamMessage | undefined;
  for await (const msg of client.messages()) last = msg;
  await sending;
  const seconds = wav.samples.length / wav.sampleRate;
  assert.ok(Date.now() - started >= (0.9 * seconds * 1000) / 4);
  assert.equal(last?.type === "result" && last.is_final && last.text, EXPECTED);
  assert.equal((await client.done).text, EXPECTED);
  assert.ok(Math.abs(progress[progress.length - 1] - seconds) < 1e-6);
});

test("a declared sample rate is announced back in hello", async () => {
  const client = await StreamingClient.connect(URL_, { apiKey, sampleRate: 48000 });
  assert.equal(client.hello.sample_rate, 48000);
  client.finish();
  assert.equal((await client.done).is_final, true);
});

test("a non-fatal error is reported and the stream goes on", async () => {
  const client = await StreamingClient.connect(URL_, { apiKey });
  client.sendAudio(wav.samples.subarray(0, 8000));
  client.sendMessage({ type: "bogus" });
  client.sendAudio(wav.samples.subarray(8000));
  client.finish();
  const errors: StreamMessage[] = [];
  for await (const msg of client.messages()) if (msg.type === "error") errors.push(msg);
  assert.deepEqual(errors.map((e) => e.type === "error" && [e.code, e.fatal]), [["unknown_type", false]]);
  assert.equal((await client.done).text, EXPECTED);
});

test("aborting before the final result rejects done with StreamClosedError", async () => {
  const client = await StreamingClient.connect(URL_, { apiKey });
  client.sendAudio(wav.samples.subarray(0, 8000));
  client.close();
  await assert.rejects(client.done, StreamClosedError);
});

// Slots of streams that just ended are freed asynchronously by the server: retry briefly.
async function connectRetrying(): Promise<StreamingClient> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await StreamingClient.connect(URL_, { apiKey });
    } catch (err) {
      if (!(err instanceof ServerError && err.code === "server_full") || attempt >= 50) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

// A slot is taken by a stream's first audio, on the engine thread: until every holder's audio has
// arrived there, a new connection is still greeted (and closed again here).
async function connectUntilRefused(): Promise<void> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const client = await StreamingClient.connect(URL_, { apiKey });
    client.close();
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

test("server_full surfaces as ServerError with its code", async () => {
  const open: StreamingClient[] = [];
  for (let i = 0; i < SLOTS; i++) {
    const holder = await connectRetrying();
    holder.sendAudio(wav.samples.subarray(0, 8000));  // takes its slot
    open.push(holder);
  }
  await assert.rejects(connectUntilRefused(), (err: unknown) => {
    assert.ok(err instanceof ServerError);
    assert.equal(err.code, "server_full");
    return true;
  });
  for (const c of open) c.close();
});

test("a missing or wrong API key is rejected with code unauthorized", async () => {
  for (const key of [undefined, "wrong"]) {
    await assert.rejects(StreamingClient.connect(URL_, { apiKey: key }), (err: unknown) => {
      assert.ok(err instanceof ServerError);
      assert.equal(err.code, "unauthorized");
      return true;
    });
  }
});

test("flush answers with a flushed result; timestamps give words", async () => {
  const client = await StreamingClient.connect(`${URL_}?timestamps=true`, { apiKey });
  client.sendAudio(wav.samples);
  client.flush();
  const words: string[] = [];
  let flushed: string | undefined;
  for await (const msg of client.messages()) {
    if (msg.type !== "result") continue;
    words.push(...(msg.words ?? []).map((w) => w.word));
    if (msg.flushed) {
      flushed = msg.text;
      client.finish();
    }
  }
  assert.equal(flushed, EXPECTED);
  assert.deepEqual(words, EXPECTED.split(" "));
});

test("a fatal error after audio rejects with its code and the final result", async () => {
  await assert.rejects(transcribe(env("PARAKEET_SHORT_URL"), wav.samples, { apiKey, speed: 0 }), (err: unknown) => {
    assert.ok(err instanceof ServerError);
    assert.equal(err.code, "stream_too_long");
    assert.equal(err.fatal, true);
    assert.equal(err.final?.audio_ms, 1000);
    return true;
  });
});

test("connection refused rejects", async () => {
  await assert.rejects(StreamingClient.connect("ws://127.0.0.1:1/", { openTimeoutMs: 5000 }));
});
