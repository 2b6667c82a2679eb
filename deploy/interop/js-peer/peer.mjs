// A js-libp2p peer built with the library's defaults (TCP and WebSocket transports, noise,
// yamux, identify, gossipsub with StrictSign: messages signed by their author, message id =
// author + sequence number), for the interop tests of p2p-mpc:
//
//	node peer.mjs --bootnode MULTIADDR --topic TOPIC [--publish N] [--timeout SECONDS]
//
// It dials the node at MULTIADDR (a /tcp/… or /tcp/…/ws address, with /p2p/<peer id>),
// prints `peer <id>`, joins TOPIC and, a second after the node joined the topic, publishes
// N messages `js message <i>`. It prints `received <from> <message id in hex> <data>` for
// each message of others, and exits 0 once it has published and the timeout passed, or 1
// when the node never joined the topic.

import './node20.mjs'
import { parseArgs } from 'node:util'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

const { values } = parseArgs({
  options: {
    bootnode: { type: 'string' },
    topic: { type: 'string' },
    publish: { type: 'string', default: '0' },
    timeout: { type: 'string', default: '30' }
  }
})
if (values.bootnode === undefined || values.topic === undefined) {
  console.error('usage: node peer.mjs --bootnode MULTIADDR --topic TOPIC [--publish N] [--timeout SECONDS]')
  process.exit(2)
}
const fail = (message) => {
  console.error(`js-peer: ${message}`)
  process.exit(1)
}

const node = await createLibp2p({
  transports: [tcp(), webSockets()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), pubsub: gossipsub() }
})
const pubsub = node.services.pubsub
const text = new TextDecoder()

pubsub.addEventListener('gossipsub:message', (event) => {
  const { msgId, msg } = event.detail
  if (msg.type !== 'signed' || msg.from.equals(node.peerId)) {
    return
  }
  const id = Buffer.from(msgId, 'base64').toString('hex')
  console.log(`received ${msg.from.toString()} ${id} ${text.decode(msg.data)}`)
})
pubsub.subscribe(values.topic)

const boot = multiaddr(values.bootnode)
try {
  await node.dial(boot)
} catch (e) {
  fail(`dial ${values.bootnode}: ${e.message}`)
}
console.log(`peer ${node.peerId.toString()}`)

const deadline = Date.now() + Number(values.timeout) * 1000
const nodeId = boot.getComponents().find((c) => c.name === 'p2p')?.value
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
while (!pubsub.getSubscribers(values.topic).some((p) => p.toString() === nodeId)) {
  if (Date.now() > deadline) {
    fail(`the node never joined topic ${values.topic}`)
  }
  await sleep(100)
}
await sleep(1000)
const encoder = new TextEncoder()
for (let i = 0; i < Number(values.publish); i++) {
  try {
    await pubsub.publish(values.topic, encoder.encode(`js message ${i}`))
  } catch (e) {
    fail(`publish: ${e.message}`)
  }
  console.log(`published js message ${i}`)
}
await sleep(Math.max(0, deadline - Date.now()))
await node.stop()
process.exit(0)
