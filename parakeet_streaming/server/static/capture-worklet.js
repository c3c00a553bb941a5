// Audio-thread side of the demo: collect the microphone into blocks and post them to the page.
class ParakeetCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.blockSize;
    this.buf = new Float32Array(this.size);
    this.n = 0;
    this.port.onmessage = () => {  // "flush": hand over the partial block, then stop
      this.port.postMessage({ last: true, samples: this.buf.slice(0, this.n) });
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
