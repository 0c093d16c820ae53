// The 'alloc'/'free' listeners of a tracer, called for hundreds of thousands of events a second.
// EventEmitter.emit() looks the listeners up and allocates an argument array on every call: with
// a trivial listener that was a third of the JS thread's time per event and a fifth of its
// garbage, and the scavenges that garbage brings are where the event loop waits longest when the
// traced program keeps the CPUs busy (README, "Performance"). Here the listeners are looked up
// again only after one was added or removed, which keeps emit()'s semantics: a listener removed by
// another (or by itself, or a `once` listener after its first call) is not called for later events,
// one added is, and the listeners of one event are those present when its delivery started.
import type { EventEmitter } from 'node:events';

const listenersVersion = Symbol('listenersVersion');
type Versioned = EventEmitter & { [listenersVersion]?: number };

/** Every EventEmitter method that adds or removes listeners; `once` and `prependOnceListener` go
 *  through `on` and `prependListener`, a `once` wrapper through `removeListener`. */
const changingMethods = ['addListener', 'on', 'prependListener', 'removeListener', 'off', 'removeAllListeners'] as const;

/** Makes every listener change on instances of `emitterClass` visible to ListenerSnapshot. */
export function trackListenerChanges(emitterClass: { prototype: EventEmitter }): void {
  const parent = Object.getPrototypeOf(emitterClass.prototype) as Record<string, unknown>;
  for (const name of changingMethods) {
    Object.defineProperty(emitterClass.prototype, name, {
      configurable: true,
      writable: true,
      value: function (this: Versioned, ...args: unknown[]) {
        this[listenersVersion] = (this[listenersVersion] ?? 0) + 1;
        // Looked up on each call, so that a later patch of EventEmitter.prototype (APM agents
        // wrap `on`) still applies.
        return (parent[name] as (this: Versioned, ...args: unknown[]) => unknown).apply(this, args);
      },
    });
  }
}

/** One event's listeners (raw: `once` wrappers included, as emit() calls them), re-read when they
 *  changed. The emitter's class must have gone through trackListenerChanges. */
export class ListenerSnapshot<Event> {
  readonly #emitter: Versioned;
  readonly #event: string;
  #version = -1;
  #listeners: readonly ((event: Event) => unknown)[] = [];

  constructor(emitter: EventEmitter, event: string) {
    this.#emitter = emitter;
    this.#event = event;
  }

  /** The listeners now. The array is not changed afterwards (a new one is made on a change), so
   *  calling them in turn is safe while they add or remove listeners. */
  current(): readonly ((event: Event) => unknown)[] {
    const version = this.#emitter[listenersVersion] ?? 0;
    if (version !== this.#version) {
      this.#listeners = this.#emitter.rawListeners(this.#event) as ((event: Event) => unknown)[];
      this.#version = version;
    }
    return this.#listeners;
  }
}
