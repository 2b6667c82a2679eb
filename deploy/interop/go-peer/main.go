// A libp2p peer built with go-libp2p's defaults (identify without a protocol version, TCP,
// noise and yamux), for the interop tests of p2p-mpc: it shows that a peer written by
// others, which shares nothing with the node but its Kademlia protocol id, can use a node
// for discovery.
//
//	go-peer dht --bootnode MULTIADDR [--find PEER_ID] [--timeout 30s] [--prefix /p2p-mpc]
//
// It listens on 127.0.0.1, runs go-libp2p-kad-dht in server mode under the node's protocol
// id (/p2p-mpc/kad/1.0.0; --prefix names another network's) with the node as its only
// bootstrap peer, and prints
// `peer <id> <listen multiaddr>`. With --find it looks PEER_ID up through the DHT, prints
// `found <id> <addrs>` and exits 0, or exits 1 when the lookup fails before the timeout.
// Without --find it serves until stdin is closed.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "dht" {
		fail("usage: go-peer dht --bootnode MULTIADDR [--find PEER_ID] [--timeout 30s] [--prefix /p2p-mpc]")
	}
	flags := flag.NewFlagSet("dht", flag.ExitOnError)
	bootnode := flags.String("bootnode", "", "multiaddr of the node, with /p2p/<peer id>")
	find := flags.String("find", "", "a peer id to look up through the DHT")
	timeout := flags.Duration("timeout", 30*time.Second, "how long the lookup may take")
	prefix := flags.String("prefix", "/p2p-mpc", "the DHT's protocol prefix (<prefix>/kad/1.0.0)")
	_ = flags.Parse(os.Args[2:])

	boot, err := peer.AddrInfoFromString(*bootnode)
	if err != nil {
		fail("--bootnode %q: %v", *bootnode, err)
	}
	host, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		fail("host: %v", err)
	}
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

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "go-peer: "+format+"\n", args...)
	os.Exit(1)
}
