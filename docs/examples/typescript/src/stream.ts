// Stream a 16-bit mono WAV file to parakeet-server over WebSocket and print the transcript.
//
//   npm ci && npx tsc
//   node dist/stream.js speech.wav [--url ws://localhost:8000] [--speed 1] [--chunk-ms 100]
//
// Audio goes out as base64 pcm16 `audio` messages at real-time pace (`--speed 4`: four times
// faster, `--speed 0`: as fast as possible). Prints `partial: <text so far>` whenever the text
// changes, `eou <n>: <utterance>` at each end of utterance, and `final: <transcript>` last; exits 0
// once the final result arrived, 1 otherwise.
import { readFileSync } from "fs";
import WebSocket from "ws";

interface Wav {
  pcm: Buffer; // little-endian signed 16-bit samples
  sampleRate: number;
}

// Server messages (docs/protocol.md). Fields beyond these are ignored.
type ServerMessage =
  | { type: "hello"; stream_id: number; sample_rate: number; model?: string }
  | { type: "result"; text: string; token_ids: number[]; confidence_scores: number[]; is_final: boolean }
  | { type: "eou"; utterance: number; text: string }
  | { type: "error"; message: string; code?: string; fatal?: boolean }
  | { type: "pong" };

function readWav(path: string): Wav {
  const buf = readFileSync(path);
  if (buf.toString("ascii", 0, 4) !== "RIFF" || buf.toString("ascii", 8, 12) !== "WAVE") {
    throw new Error(`${path}: not a WAV file`);
  }
  let fmt: Buffer | undefined;
  let data: Buffer | undefined;
  for (let pos = 12; pos + 8 <= buf.length; ) {
    const id = buf.toString("ascii", pos, pos + 4);
    const size = buf.readUInt32LE(pos + 4);
    const body = buf.subarray(pos + 8, Math.min(pos + 8 + size, buf.length));
    if (id === "fmt ") fmt = body;
    else if (id === "data") data = body;
    pos += 8 + size + (size % 2); // chunks are padded to an even size
  }
  if (!fmt || !data) throw new Error(`${path}: no fmt or data chunk`);
  const format = fmt.readUInt16LE(0); // 1 = PCM, 0xfffe = WAVE_FORMAT_EXTENSIBLE
  const channels = fmt.readUInt16LE(2);
  const bits = fmt.readUInt16LE(14);
  if ((format !== 1 && format !== 0xfffe) || channels !== 1 || bits !== 16) {
    throw new Error(`${path}: need 16-bit mono PCM, got format ${format}, ${channels} channels, ${bits} bits`);
  }
  return { pcm: data.subarray(0, data.length - (data.length % 2)), sampleRate: fmt.readUInt32LE(4) };
}

function parseArgs(argv: string[]): { wav: string; url: string; speed: number; chunkMs: number } {
  const opts = { wav: "", url: "ws://localhost:8000", speed: 1, chunkMs: 100 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--url") opts.url = argv[++i];
    else if (arg === "--speed") opts.speed = Number(argv[++i]);
    else if (arg === "--chunk-ms") opts.chunkMs = Number(argv[++i]);
    else if (!arg.startsWith("--") && !opts.wav) opts.wav = arg;
    else throw new Error(`unknown argument ${arg}`);
  }
  if (!opts.wav || !(opts.speed >= 0) || !(opts.chunkMs > 0)) {
    throw new Error("usage: node dist/stream.js FILE.wav [--url ws://host:port] [--speed N] [--chunk-ms N]");
  }
  return opts;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function sendAudio(ws: WebSocket, wav: Wav, serverRate: number, speed: number, chunkMs: number) {
  const step = Math.max(1, Math.floor((wav.sampleRate * chunkMs) / 1000)) * 2; // bytes per message
  const start = Date.now();
  for (let offset = 0; offset < wav.pcm.length; offset += step) {
    if (ws.readyState !== WebSocket.OPEN) return; // the server ended the stream
    const chunk = wav.pcm.subarray(offset, offset + step);
    const msg: Record<string, unknown> = {
      type: "audio",
      data: chunk.toString("base64"),
      encoding: "pcm16",
      final: offset + step >= wav.pcm.length,
    };
    if (wav.sampleRate !== serverRate) msg.sample_rate = wav.sampleRate; // the server resamples
    ws.send(JSON.stringify(msg));
    if (speed > 0) {
      // Pace by the audio clock: the audio sent so far is due at start + its duration / speed.
      const sentMs = ((offset + chunk.length) / 2 / wav.sampleRate) * 1000;
      await sleep(Math.max(0, start + sentMs / speed - Date.now()));
    }
  }
  if (wav.pcm.length === 0) ws.send(JSON.stringify({ type: "close" }));
}

function main(): void {
  const opts = parseArgs(process.argv.slice(2));
  const wav = readWav(opts.wav);
  const ws = new WebSocket(opts.url);
  let text = "";
  let gotFinal = false;

  ws.on("message", (raw: WebSocket.RawData) => {
    const msg = JSON.parse(raw.toString()) as ServerMessage;
    switch (msg.type) {
      case "hello":
        console.error(`connected: stream ${msg.stream_id}, model ${msg.model}`);
        sendAudio(ws, wav, msg.sample_rate, opts.speed, opts.chunkMs).catch((err) => console.error(err));
        break;
      case "result":
        if (msg.is_final) {
          gotFinal = true;
          console.log(`final: ${msg.text}`);
          ws.close(); // the server closes too; no need to wait for it
        } else if (msg.text !== text) {
          text = msg.text; // a result may add only an <EOU> token, leaving the text unchanged
          console.log(`partial: ${text}`);
        }
        break;
      case "eou":
        console.log(`eou ${msg.utterance}: ${msg.text}`);
        break;
      case "error": // e.g. server_full (sent instead of hello), bad_audio, idle_timeout
        console.error(`error: ${msg.code ?? ""}: ${msg.message}`);
        break;
    }
  });
  ws.on("error", (err) => console.error(`websocket error: ${err.message}`));
  ws.on("close", () => {
    if (!gotFinal) console.error("connection closed before the final result");
    process.exit(gotFinal ? 0 : 1);
  });
}

try {
  main();
} catch (err) {
  console.error((err as Error).message);
  process.exit(2);
}
