// js-libp2p 3 is written for Node.js 22, which has Promise.withResolvers and a global
// WebSocket; this machine has Node.js 20. The peer imports this module first, so the
// libraries find both (the WebSocket from the `ws` package, which Node.js's own is built on).
import { WebSocket } from 'ws'

if (globalThis.WebSocket === undefined) {
  globalThis.WebSocket = WebSocket
}
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => {
      resolve = res
      reject = rej
    })
    return { promise, resolve, reject }
  }
}
