// A libp2p peer built with go-libp2p's defaults (identify without a protocol version, TCP,
// noise and yamux), for the interop tests of p2p-mpc: it shows that a peer written by
// others, which shares nothing with the node but its Kademlia protocol id, can use a node
// for discovery, and gossip with it on its topics.
//
//	go-peer dht --bootnode MULTIADDR [--find PEER_ID] [--timeout 30s] [--prefix /p2p-mpc]
//	go-peer pubsub --bootnode MULTIADDR --topic TOPIC [--publish N] [--timeout 30s]
//	go-peer forge --bootnode MULTIADDR --topic TOPIC [--count N] [--replay-after D]
//
// It listens on 127.0.0.1, runs go-libp2p-kad-dht in server mode under the node's protocol
// id (/p2p-mpc/kad/1.0.0; --prefix names another network's) with the node as its only
// bootstrap peer, and prints
// `peer <id> <listen multiaddr>`. With --find it looks PEER_ID up through the DHT, prints
// `found <id> <addrs>` and exits 0, or exits 1 when the lookup fails before the timeout.
// Without --find it serves until stdin is closed.
//
// pubsub joins TOPIC with go-libp2p-pubsub's defaults (GossipSub; messages signed by the
// author, StrictSign validation; message id = author + sequence number), connected to the
// node only. A second after the node joined the topic it publishes N messages `go message <i>`,
// prints `received <from> <message id in hex> <data>` for each message of others, and exits
// 0 once it has published and the timeout passed, or 1 when the node never joined its mesh.
//
// forge (forge.go) writes gossipsub's wire format by hand: one validly signed message and N
// whose signature does not match, and can send the first again later (a replay).
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "pubsub" {
		gossip()
		return
	}
	if len(os.Args) >= 2 && os.Args[1] == "forge" {
		forge()
		return
	}
	if len(os.Args) < 2 || os.Args[1] != "dht" {
		fail("usage: go-peer dht --bootnode MULTIADDR [--find PEER_ID] [--timeout 30s] [--prefix /p2p-mpc] | go-peer pubsub --bootnode MULTIADDR --topic TOPIC [--publish N] [--timeout 30s] | go-peer forge --bootnode MULTIADDR --topic TOPIC [--count N] [--replay-after D]")
	}
	flags := flag.NewFlagSet("dht", flag.ExitOnError)
	bootnode := flags.String("bootnode", "", "multiaddr of the node, with /p2p/<peer id>")
	find := flags.String("find", "", "a peer id to look up through the DHT")
	timeout := flags.Duration("timeout", 30*time.Second, "how long the lookup may take")
	prefix := flags.String("prefix", "/p2p-mpc", "the DHT's protocol prefix (<prefix>/kad/1.0.0)")
	_ = flags.Parse(os.Args[2:])

	host, boot := listen(*bootnode)
	defer host.Close()
	ctx := context.Background()
	kad, err := dht.New(host,
		dht.Mode(dht.ModeServer),
		dht.ProtocolPrefix(protocol.ID(*prefix)),
		dht.BootstrapPeers(*boot),
	)
	if err != nil {
		fail("dht: %v", err)
	}
	defer kad.Close()
	if err := host.Connect(ctx, *boot); err != nil {
		fail("connect to the bootnode: %v", err)
	}
	if err := kad.Bootstrap(ctx); err != nil {
		fail("bootstrap: %v", err)
	}
	fmt.Printf("peer %s %s\n", host.ID(), host.Addrs()[0])

	if *find == "" {
		_, _ = io.Copy(io.Discard, os.Stdin)
		return
	}
	target, err := peer.Decode(*find)
	if err != nil {
		fail("--find %q: %v", *find, err)
	}
	deadline := time.Now().Add(*timeout)
	for {
		lookup, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := kad.FindPeer(lookup, target)
		cancel()
		if err == nil && len(info.Addrs) > 0 {
			fmt.Printf("found %s %v\n", info.ID, info.Addrs)
			return
		}
		if time.Now().After(deadline) {
			fail("peer %s not found through the DHT within %s: %v", target, *timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func gossip() {
	flags := flag.NewFlagSet("pubsub", flag.ExitOnError)
	bootnode := flags.String("bootnode", "", "multiaddr of the node, with /p2p/<peer id>")
	topicName := flags.String("topic", "", "the topic to join")
	publish := flags.Int("publish", 0, "messages to publish once the node is in the mesh")
	timeout := flags.Duration("timeout", 30*time.Second, "how long to run")
	_ = flags.Parse(os.Args[2:])

	host, boot := listen(*bootnode)
	defer host.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ps, err := pubsub.NewGossipSub(ctx, host)
	if err != nil {
		fail("gossipsub: %v", err)
	}
	topic, err := ps.Join(*topicName)
	if err != nil {
		fail("join %s: %v", *topicName, err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		fail("subscribe %s: %v", *topicName, err)
	}
	if err := host.Connect(ctx, *boot); err != nil {
		fail("connect to the node: %v", err)
	}
	fmt.Printf("peer %s %s\n", host.ID(), host.Addrs()[0])
	go func() {
		for {
			msg, err := sub.Next(ctx)
			if err != nil {
				return
			}
			if msg.ReceivedFrom != host.ID() {
				fmt.Printf("received %s %s %s\n", msg.GetFrom(), hex.EncodeToString([]byte(msg.ID)), msg.Data)
			}
		}
	}()
	// Publish once the node is a peer of the topic (its subscription arrived).
	for len(topic.ListPeers()) == 0 {
		select {
		case <-ctx.Done():
			fail("the node never joined topic %s", *topicName)
		case <-time.After(100 * time.Millisecond):
		}
	}
	// Publishing at the very moment the node's subscription arrived lost every message in
	// about one run of five, before they reached the node's gossipsub; a second later,
	// none was lost in our runs.
	time.Sleep(time.Second)
	for i := 0; i < *publish; i++ {
		if err := topic.Publish(ctx, []byte(fmt.Sprintf("go message %d", i))); err != nil {
			fail("publish: %v", err)
		}
		fmt.Printf("published go message %d\n", i)
	}
	<-ctx.Done()
}

// listen starts a host with go-libp2p's defaults on 127.0.0.1 and reads the node's address.
func listen(bootnode string) (host.Host, *peer.AddrInfo) {
	boot, err := peer.AddrInfoFromString(bootnode)
	if err != nil {
		fail("--bootnode %q: %v", bootnode, err)
	}
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		fail("host: %v", err)
	}
	return h, boot
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "go-peer: "+format+"\n", args...)
	os.Exit(1)
}
