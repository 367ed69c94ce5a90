/**
 * A shared/exclusive gate for image decodes. libvips keeps one error buffer for the whole
 * process, and sharp empties it whenever any of its pipelines ends; a decode that fails while
 * another one finishes can therefore lose its reason, and sharp then reports "Unknown error".
 * Decodes run shared, several at once; the retry that recovers a lost reason runs alone, once
 * the decodes in flight have ended and before any new one starts.
 */
export class DecodeGate {
  private running = 0;
  /** Settles when the exclusive run queued last has ended; new shared runs wait for it. */
  private exclusive: Promise<void> = Promise.resolve();
  private idleWaiters: (() => void)[] = [];

  /** Runs `task` alongside other shared tasks, after any exclusive one queued before it. */
  async shared<T>(task: () => Promise<T>): Promise<T> {
    await this.exclusive;
    this.running++;
    try {
      return await task();
    } finally {
      this.running--;
      if (this.running === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  /** Runs `task` with no other task of this gate in flight. */
  async alone<T>(task: () => Promise<T>): Promise<T> {
    const before = this.exclusive;
    let release!: () => void;
    this.exclusive = new Promise<void>((resolve) => (release = resolve));
    try {
      await before;
      while (this.running > 0) await new Promise<void>((wake) => this.idleWaiters.push(wake));
      return await task();
    } finally {
      release();
    }
  }
}
