// Browser microphone capture in an AudioWorklet, streamed with StreamingClient.
//
//   const live = await streamMicrophone("ws://localhost:8000", { onMessage: (m) => console.log(m) });
//   ...
//   const final = await live.stop();   // finishes the stream, resolves with the final result
import { ClientOptions, StreamingClient } from "./client.js";
import type { Result } from "./messages.js";

// The worklet runs on the audio thread; it is loaded from a Blob URL so no extra file is served.
const PROCESSOR = `
class ParakeetCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.blockSize;
    this.buf = new Float32Array(this.size);
    this.n = 0;
    this.port.onmessage = () => {            // "flush": hand over the partial block, then stop
      this.port.postMessage({ last: true, samples: this.buf.slice(0, this.n) });
      this.n = 0;
      this.stopped = true;
    };
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch && !this.stopped) {
      for (let i = 0; i < ch.length; i++) {
        this.buf[this.n++] = ch[i];
        if (this.n === this.size) {
          this.port.postMessage({ last: false, samples: this.buf });
          this.buf = new Float32Array(this.size);
          this.n = 0;
        }
      }
    }
    return !this.stopped;
  }
}
registerProcessor("parakeet-capture", ParakeetCapture);
`;

export interface MicrophoneOptions {
  /** AudioContext rate; the browser resamples the microphone to it. Default 16000. */
  sampleRate?: number;
  /** Audio per block handed to `onAudio`. Default 100 ms. */
  blockMs?: number;
  /** getUserMedia audio constraints. Default: mono, no echo cancellation, noise suppression or gain control. */
  constraints?: MediaTrackConstraints;
}

export interface Microphone {
  readonly sampleRate: number;
  /** Stop capturing; resolves after the last (partial) block was delivered. */
  stop(): Promise<void>;
}

/** Capture the microphone; `onAudio` gets float32 mono blocks at `sampleRate`. */
export async function startMicrophone(
  onAudio: (samples: Float32Array) => void,
  options: MicrophoneOptions = {},
): Promise<Microphone> {
  const media = await navigator.mediaDevices.getUserMedia({
    // Unprocessed by default: the model expects raw speech, and noise suppression artefacts hurt it.
    audio: options.constraints ?? {
      channelCount: 1,
      echoCancellation: false,
      noiseSuppression: false,
      autoGainControl: false,
    },
  });
  const context = new AudioContext({ sampleRate: options.sampleRate ?? 16000 });
  const url = URL.createObjectURL(new Blob([PROCESSOR], { type: "application/javascript" }));
  try {
    await context.audioWorklet.addModule(url);
  } finally {
    URL.revokeObjectURL(url);
  }
  const source = context.createMediaStreamSource(media);
  const blockSize = Math.max(128, Math.round((context.sampleRate * (options.blockMs ?? 100)) / 1000));
  const node = new AudioWorkletNode(context, "parakeet-capture", { processorOptions: { blockSize } });
  let flushed: (() => void) | undefined;
  // The reply to "flush" is marked `last`: blocks posted before it may still arrive first.
  node.port.onmessage = (ev: MessageEvent<{ last: boolean; samples: Float32Array }>) => {
    if (ev.data.samples.length) onAudio(ev.data.samples);
    if (ev.data.last) flushed?.();
  };
  source.connect(node);
  return {
    sampleRate: context.sampleRate,
    async stop() {
      await new Promise<void>((resolve) => {
        flushed = resolve;
        node.port.postMessage("flush");
      });
      source.disconnect();
      media.getTracks().forEach((t) => t.stop());
      await context.close();
    },
  };
}

export interface LiveStream {
  client: StreamingClient;
  microphone: Microphone;
  /** Stop the microphone, finish the stream, resolve with the final result. */
  stop(): Promise<Result>;
}

/** Start the microphone, connect, and stream until `stop()`. Messages go to `options.onMessage`. */
export async function streamMicrophone(
  url: string,
  options: ClientOptions & MicrophoneOptions = {},
): Promise<LiveStream> {
  let client: StreamingClient | undefined;
  const early: Float32Array[] = []; // captured while connecting
  const microphone = await startMicrophone((block) => (client ? client.sendAudio(block) : early.push(block)), options);
  try {
    // The rate the context really runs at, which a browser may choose over the one asked for.
    client = await StreamingClient.connect(url, { ...options, sampleRate: microphone.sampleRate });
  } catch (err) {
    await microphone.stop();
    throw err;
  }
  early.splice(0).forEach((block) => client!.sendAudio(block));
  const connected = client;
  return {
    client: connected,
    microphone,
    async stop() {
      await microphone.stop();
      connected.finish();
      return connected.done;
    },
  };
}
