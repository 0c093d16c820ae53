// lib/tracer/listener-snapshot.ts on a plain EventEmitter subclass: the snapshot follows every way of
// adding and removing listeners, and patches of EventEmitter.prototype made later still apply.
import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { ListenerSnapshot, trackListenerChanges } from '../../lib/tracer/listener-snapshot.js';

class Tracked extends EventEmitter {}
trackListenerChanges(Tracked);

const originalOn = EventEmitter.prototype.on;
afterEach(() => {
  EventEmitter.prototype.on = originalOn;
  EventEmitter.prototype.addListener = originalOn;
});

describe('ListenerSnapshot', () => {
  it('follows on, once, prepend, off, removeListener and removeAllListeners', () => {
    const e = new Tracked();
    const snapshot = new ListenerSnapshot<number>(e, 'x');
    const a = () => {};
    const b = () => {};
    expect(snapshot.current()).toEqual([]);
    e.on('x', a);
    expect(snapshot.current()).toEqual([a]);
    e.prependListener('x', b);
    expect(snapshot.current()).toEqual([b, a]);
    e.off('x', b);
    expect(snapshot.current()).toEqual([a]);
    e.once('x', b);
    expect(snapshot.current()).toHaveLength(2);
    e.emit('x', 1); // the once wrapper removes itself
    expect(snapshot.current()).toEqual([a]);
    e.addListener('x', b);
    e.removeListener('x', a);
    expect(snapshot.current()).toEqual([b]);
    e.removeAllListeners();
    expect(snapshot.current()).toEqual([]);
  });

  it('keeps the array it returned unchanged when listeners change', () => {
    const e = new Tracked();
    const snapshot = new ListenerSnapshot<number>(e, 'x');
    const a = () => {};
    e.on('x', a);
    const before = snapshot.current();
    e.on('x', () => {});
    expect(before).toEqual([a]);
    expect(snapshot.current()).toHaveLength(2);
  });

  it("goes through EventEmitter.prototype's methods as they are when called", () => {
    const e = new Tracked();
    const seen: (string | symbol)[] = [];
    // What an APM agent does after our module loaded: wrap on/addListener.
    EventEmitter.prototype.on = function (this: EventEmitter, event: string | symbol, listener: (...args: unknown[]) => void) {
      seen.push(event);
      return originalOn.call(this, event, listener);
    };
    e.on('x', () => {});
    expect(seen).toEqual(['x']);
    expect(new ListenerSnapshot<number>(e, 'x').current()).toHaveLength(1);
  });
});
