package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"
)

// forge speaks gossipsub's wire format by hand on one /meshsub/1.1.0 stream to the node,
// where a library would never send what it sends. It subscribes to TOPIC, then publishes in
// one RPC: a forgery of the next message (its author and sequence number, its signature,
// other data: `forge BAD first`), that message signed as the libp2p pubsub specification
// says (`forge valid`), COUNT messages whose signature does not match their data (`forge
// bad <i>`, signed, then altered), and a correctly signed message whose sequence number is
// 5,000 below the highest of the others (`forge stale`). It prints `sent <valid> <forged>` once the
// stream is written. With --replay-after D it sends
// the signed message again, byte for byte, D later (after gossipsub's duplicate cache has
// forgotten it) and prints `replayed`. It exits 0 when done.
func forge() {
	flags := flag.NewFlagSet("forge", flag.ExitOnError)
	bootnode := flags.String("bootnode", "", "multiaddr of the node, with /p2p/<peer id>")
	topicName := flags.String("topic", "", "the topic to publish on")
	count := flags.Int("count", 1, "messages with a forged signature")
	replayAfter := flags.Duration("replay-after", 0, "send the signed message again this much later (0: never)")
	_ = flags.Parse(os.Args[2:])

	host, boot := listen(*bootnode)
	defer host.Close()
	// The node opens a gossipsub stream of its own to send to this peer: take it, and drop
	// what comes (without it, the node would find gossipsub unsupported here and close the
	// stream this peer writes on).
	host.SetStreamHandler("/meshsub/1.1.0", func(s network.Stream) {
		_, _ = io.Copy(io.Discard, s)
		_ = s.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second+*replayAfter)
	defer cancel()
	if err := host.Connect(ctx, *boot); err != nil {
		fail("connect to the node: %v", err)
	}
	stream, err := host.NewStream(ctx, boot.ID, "/meshsub/1.1.0")
	if err != nil {
		fail("open a gossipsub stream: %v", err)
	}
	defer stream.Close()
	key := host.Peerstore().PrivKey(host.ID())
	author := []byte(host.ID())
	seqno := uint64(time.Now().UnixNano())

	var signAs func(data string, seqno uint64) *pb.Message
	sign := func(data string) *pb.Message {
		seqno++
		return signAs(data, seqno)
	}
	signAs = func(data string, seqno uint64) *pb.Message {
		number := make([]byte, 8)
		binary.BigEndian.PutUint64(number, seqno)
		m := &pb.Message{From: author, Data: []byte(data), Seqno: number, Topic: topicName}
		unsigned, err := proto.Marshal(m)
		if err != nil {
			fail("encode: %v", err)
		}
		sig, err := key.Sign(append([]byte("libp2p-pubsub:"), unsigned...))
		if err != nil {
			fail("sign: %v", err)
		}
		m.Signature = sig
		return m
	}
	subscribe := true
	rpc := &pb.RPC{Subscriptions: []*pb.RPC_SubOpts{{Subscribe: &subscribe, Topicid: topicName}}}
	valid := sign("forge valid")
	first := proto.CloneOf(valid)
	first.Data = []byte("forge BAD first")
	rpc.Publish = append(rpc.Publish, first, valid)
	for i := 0; i < *count; i++ {
		m := sign(fmt.Sprintf("forge bad %d", i))
		m.Data = []byte(fmt.Sprintf("forge BAD %d", i))
		rpc.Publish = append(rpc.Publish, m)
	}
	rpc.Publish = append(rpc.Publish, signAs("forge stale", seqno-5000))
	bytes, err := proto.Marshal(rpc)
	if err != nil {
		fail("encode: %v", err)
	}
	writer := msgio.NewVarintWriter(stream)
	if err := writer.WriteMsg(bytes); err != nil {
		fail("write: %v", err)
	}
	fmt.Printf("sent 1 %d\n", *count)
	if *replayAfter > 0 {
		time.Sleep(*replayAfter)
		again, err := proto.Marshal(&pb.RPC{Publish: []*pb.Message{valid}})
		if err != nil {
			fail("encode: %v", err)
		}
		if err := writer.WriteMsg(again); err != nil {
			fail("write the replay: %v", err)
		}
		fmt.Println("replayed")
	}
	// Give the node time to read the stream before the connection closes.
	time.Sleep(time.Second)
}
