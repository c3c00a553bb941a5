// One WebSocket connection = one stream. Works with the browser's WebSocket, Node >= 22's global
// WebSocket, or the `ws` package (loaded on demand, e.g. on Node 20).
import { floatToPcm16, toBase64 } from "./audio.js";
import {
  Eou,
  ErrorMessage,
  Hello,
  parseMessage,
  Result,
  ServerError,
  ServerMessage,
  StreamClosedError,
} from "./messages.js";

/** The part of the WebSocket API this client uses (browsers and `ws` both have it). */
export interface WebSocketLike {
  binaryType: string;
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** What `messages()` yields: results, ends of utterance, and non-fatal errors (the stream goes on). */
export type StreamMessage = Result | Eou | ErrorMessage;

export interface ClientOptions {
  /** Rate of the audio you send. Declared in the URL (`?sample_rate=`) so the server resamples. Default: the server's. */
  sampleRate?: number;
  /** Raw binary frames (default when the server speaks protocol 2); false sends base64 JSON. */
  binary?: boolean;
  /** API key for servers started with --api-key; sent as `?token=` (browsers cannot set headers). */
  apiKey?: string;
  /** A WebSocket implementation; default: the global one, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  openTimeoutMs?: number;
  onMessage?: (msg: StreamMessage) => void;
}

export interface StreamOptions {
  /** 1 = real time (default), 4 = four times faster, 0 = as fast as possible. */
  speed?: number;
  chunkMs?: number;
  onProgress?: (sentSeconds: number, totalSeconds: number) => void;
}

export interface Transcript {
  text: string;
  final: Result;
  hello: Hello;
  utterances: Eou[];
  results: Result[];
}

const OPEN = 1;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class StreamingClient {
  /** Resolves with the final result; rejects with ServerError (fatal error) or StreamClosedError. */
  readonly done: Promise<Result>;
  sampleRate = 0;
  private helloMsg?: Hello;
  private binary = false;
  private finished = false;
  private fatal?: ErrorMessage;
  private settled = false;
  private queue = new MessageQueue();
  private resolveDone!: (r: Result) => void;
  private rejectDone!: (e: Error) => void;

  private constructor(
    private readonly ws: WebSocketLike,
    private readonly options: ClientOptions,
  ) {
    this.done = new Promise<Result>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => undefined); // a caller that never awaits `done` must not crash Node
  }

  /** Connect and wait for `hello`. Rejects with ServerError (e.g. code "server_full"). */
  static async connect(url: string, options: ClientOptions = {}): Promise<StreamingClient> {
    const Impl = options.WebSocket ?? (await defaultWebSocket());
    const ws = new Impl(withQuery(url, { sample_rate: options.sampleRate, token: options.apiKey }));
    ws.binaryType = "arraybuffer";
    const client = new StreamingClient(ws, options);
    await client.waitForHello(url, options.openTimeoutMs ?? 10_000);
    return client;
  }

  get hello(): Hello {
    return this.helloMsg!;
  }

  /** Send float mono samples in [-1, 1] at `sampleRate`. */
  sendAudio(samples: Float32Array): void {
    if (this.finished) throw new Error("the stream was finished; no more audio can be sent");
    if (samples.length === 0 || this.ws.readyState !== OPEN) return;
    const pcm = floatToPcm16(samples);
    if (this.binary) {
      this.ws.send(pcm);
      return;
    }
    const msg: Record<string, unknown> = { type: "audio", data: toBase64(pcm), encoding: "pcm16", final: false };
    if (this.sampleRate !== this.hello.sample_rate) msg.sample_rate = this.sampleRate; // older servers ignore the URL
    this.sendMessage(msg);
  }

  /** No more audio: the server decodes what it has, sends the final result, and closes. */
  finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.sendMessage({ type: "close" });
  }

  /** Decode everything sent so far now; the answer is a result with `flushed: true`. */
  flush(): void {
    this.sendMessage({ type: "flush" });
  }

  /** Send any protocol message as JSON, e.g. `{type: "ping"}`. */
  sendMessage(msg: object): void {
    if (this.ws.readyState === OPEN) this.ws.send(JSON.stringify(msg));
  }

  /** Send `samples` in `chunkMs` pieces paced by the audio clock, then finish the stream. */
  async stream(samples: Float32Array, options: StreamOptions = {}): Promise<void> {
    const speed = options.speed ?? 1;
    const step = Math.max(1, Math.floor((this.sampleRate * (options.chunkMs ?? 100)) / 1000));
    const total = samples.length / this.sampleRate;
    const start = Date.now();
    for (let offset = 0; offset < samples.length; offset += step) {
      if (this.ws.readyState !== OPEN) return; // the server ended the stream
      const chunk = samples.subarray(offset, offset + step);
      this.sendAudio(chunk);
      const sent = (offset + chunk.length) / this.sampleRate;
      options.onProgress?.(sent, total);
      if (speed > 0) await sleep(Math.max(0, start + (sent * 1000) / speed - Date.now()));
    }
    this.finish();
  }

  /** Messages until the final result (included). Ends by throwing what `done` rejects with. */
  messages(): AsyncIterableIterator<StreamMessage> {
    return this.queue.iterate();
  }

  /** Close the connection; before the final result this aborts the stream. */
  close(): void {
    this.ws.close();
  }

  private waitForHello(url: string, timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`no hello from ${url} within ${timeoutMs} ms`));
        this.ws.close();
      }, timeoutMs);
      this.ws.onmessage = (ev) => {
        const msg = parseMessage(textOf(ev.data));
        if (this.helloMsg === undefined) {
          clearTimeout(timer);
          if (msg?.type === "hello") {
            this.onHello(msg);
            resolve();
          } else {
            reject(msg?.type === "error" ? new ServerError(msg.code, msg.message, true) : new Error(`expected hello`));
            this.ws.close();
          }
        } else if (msg !== null) {
          this.dispatch(msg);
        }
      };
      this.ws.onclose = () => {
        clearTimeout(timer);
        reject(new StreamClosedError(`connection to ${url} closed before hello`));
        this.settle(this.fatal ? toError(this.fatal) : new StreamClosedError());
      };
      this.ws.onerror = () => undefined; // onclose follows and reports
    });
  }

  private onHello(hello: Hello): void {
    this.helloMsg = hello;
    this.sampleRate = this.options.sampleRate ?? hello.sample_rate;
    const query = new URL(this.wsUrl()).searchParams;
    this.binary = this.options.binary ?? ((hello.protocol ?? 1) >= 2 && !query.has("encoding"));
  }

  private wsUrl(): string {
    return (this.ws as unknown as { url?: string }).url ?? "ws://unknown/";
  }

  private dispatch(msg: ServerMessage): void {
    if (msg.type === "error" && msg.fatal) {
      this.fatal = msg; // the final result usually follows
      return;
    }
    if (msg.type !== "result" && msg.type !== "eou" && msg.type !== "error") return;
    this.options.onMessage?.(msg);
    this.queue.push(msg);
    if (msg.type === "result" && msg.is_final) {
      this.settle(this.fatal ? toError(this.fatal, msg) : msg);
      this.ws.close();
    }
  }

  private settle(outcome: Result | Error): void {
    if (this.settled) return;
    this.settled = true;
    if (outcome instanceof Error) {
      this.rejectDone(outcome);
      this.queue.fail(outcome);
    } else {
      this.resolveDone(outcome);
      this.queue.end();
    }
  }
}

/** Stream `samples` (paced, see `stream`) and collect the transcript. Any server error rejects. */
export async function transcribe(
  url: string,
  samples: Float32Array,
  options: ClientOptions & StreamOptions = {},
): Promise<Transcript> {
  const client = await StreamingClient.connect(url, options);
  const out: Transcript = { text: "", final: undefined as unknown as Result, hello: client.hello, utterances: [], results: [] };
  const sending = client.stream(samples, options);
  try {
    for await (const msg of client.messages()) {
      if (msg.type === "error") throw toError(msg);
      if (msg.type === "eou") out.utterances.push(msg);
      else out.results.push(msg);
    }
  } finally {
    client.close();
    await sending;
  }
  out.final = out.results[out.results.length - 1];
  out.text = out.final.text;
  return out;
}

function toError(msg: ErrorMessage, final?: Result): ServerError {
  return new ServerError(msg.code, msg.message, msg.fatal, final);
}

function withQuery(url: string, params: Record<string, string | number | undefined>): string {
  const u = new URL(url);
  for (const [key, value] of Object.entries(params)) if (value !== undefined) u.searchParams.set(key, String(value));
  return u.toString();
}

function textOf(data: unknown): string {
  if (typeof data === "string") return data;
  return new TextDecoder().decode(data as ArrayBuffer);
}

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const global = (globalThis as { WebSocket?: unknown }).WebSocket;
  if (global) return global as WebSocketConstructor;
  const mod = await import("ws"); // Node < 22
  return mod.default as unknown as WebSocketConstructor;
}

/** An async iterator fed by WebSocket callbacks. */
class MessageQueue {
  private items: StreamMessage[] = [];
  private waiting: Array<{ resolve: (r: IteratorResult<StreamMessage>) => void; reject: (e: Error) => void }> = [];
  private closed = false;
  private error?: Error;

  push(msg: StreamMessage): void {
    const w = this.waiting.shift();
    if (w) w.resolve({ value: msg, done: false });
    else this.items.push(msg);
  }

  end(): void {
    this.closed = true;
    for (const w of this.waiting.splice(0)) w.resolve({ value: undefined, done: true });
  }

  fail(error: Error): void {
    this.error = error;
    this.closed = true;
    for (const w of this.waiting.splice(0)) w.reject(error);
  }

  iterate(): AsyncIterableIterator<StreamMessage> {
    const next = (): Promise<IteratorResult<StreamMessage>> => {
      const item = this.items.shift();
      if (item !== undefined) return Promise.resolve({ value: item, done: false });
      if (this.error) return Promise.reject(this.error);
      if (this.closed) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
    };
    const it: AsyncIterableIterator<StreamMessage> = { next, [Symbol.asyncIterator]: () => it };
    return it;
  }
}
