package raftstore

import (
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

func app(to, term, index, commit uint64, entries int) raftpb.Message {
	return raftpb.Message{Type: raftpb.MsgApp, To: to, Term: term, Index: index, Commit: commit, Entries: make([]raftpb.Entry, entries)}
}

func TestSupersededCommitNotices(t *testing.T) {
	hb := raftpb.Message{Type: raftpb.MsgHeartbeat, To: 2, Term: 3, Commit: 9}
	for _, tc := range []struct {
		name string
		msgs []raftpb.Message
		want uint64
	}{
		{"lone commit notice is sent", []raftpb.Message{app(2, 3, 10, 10, 0)}, 0},
		{"notice then append to same peer", []raftpb.Message{app(2, 3, 10, 10, 0), app(2, 3, 10, 10, 2)}, 1 << 0},
		{"notices to two peers then appends", []raftpb.Message{app(2, 3, 10, 10, 0), app(3, 3, 10, 10, 0), app(2, 3, 10, 10, 1), app(3, 3, 10, 10, 1)}, 1<<0 | 1<<1},
		{"append to another peer does not cover", []raftpb.Message{app(2, 3, 10, 10, 0), app(3, 3, 10, 10, 1)}, 0},
		{"later append with a lower commit does not cover", []raftpb.Message{app(2, 3, 10, 11, 0), app(2, 3, 10, 10, 1)}, 0},
		{"later append of another term does not cover", []raftpb.Message{app(2, 3, 10, 10, 0), app(2, 4, 10, 10, 1)}, 0},
		{"two notices: the last is kept", []raftpb.Message{app(2, 3, 10, 9, 0), app(2, 3, 10, 10, 0)}, 1 << 0},
		{"append before a notice is never dropped", []raftpb.Message{app(2, 3, 10, 10, 3), app(2, 3, 13, 10, 0)}, 0},
		{"heartbeat is not an append", []raftpb.Message{app(2, 3, 10, 9, 0), hb}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var scratch []raftpb.Message
			if got := supersededCommitNotices(tc.msgs, &scratch); got != tc.want {
				t.Errorf("superseded = %b, want %b", got, tc.want)
			}
		})
	}
	// Beyond the first 63 messages nothing is dropped (the set is a uint64).
	var many []raftpb.Message
	for range 70 {
		many = append(many, app(2, 3, 10, 10, 0))
	}
	var scratch []raftpb.Message
	got := supersededCommitNotices(many, &scratch)
	if got != 1<<62-1 {
		t.Errorf("superseded of 70 notices = %b, want the first 62", got)
	}
}

func TestAppenderCoalescesAcks(t *testing.T) {
	a := &appender{h: &Host{}, acks: map[ackKey]int{}}
	ack := func(to ids.NodeID, g ids.GroupID, leader, term, index uint64, reject bool) routedMessage {
		return routedMessage{to: to, msg: transport.Message{Group: g, Msg: raftpb.Message{
			Type: raftpb.MsgAppResp, To: leader, From: 2, Term: term, Index: index, Reject: reject}}}
	}
	var out outbox
	for _, rm := range []routedMessage{
		ack(1, 7, 1, 3, 10, false),
		ack(1, 7, 1, 3, 12, false), // supersedes index 10 in place
		ack(1, 7, 1, 3, 11, false), // lower than 12: dropped
		ack(1, 7, 1, 3, 5, true),   // rejections are always sent
		ack(1, 8, 1, 3, 4, false),  // another group
		ack(1, 7, 1, 4, 13, false), // another term
		ack(9, 7, 1, 3, 12, false), // another node
		{to: 1, msg: transport.Message{Group: 7, Msg: raftpb.Message{Type: raftpb.MsgHeartbeatResp, To: 1, Term: 3}}},
	} {
		a.addResponse(&out, rm)
	}
	type sent struct {
		g      ids.GroupID
		typ    raftpb.MessageType
		term   uint64
		index  uint64
		reject bool
	}
	var got []sent
	for _, m := range out[1] {
		got = append(got, sent{m.Group, m.Msg.Type, m.Msg.Term, m.Msg.Index, m.Msg.Reject})
	}
	want := []sent{
		{7, raftpb.MsgAppResp, 3, 12, false},
		{7, raftpb.MsgAppResp, 3, 5, true},
		{8, raftpb.MsgAppResp, 3, 4, false},
		{7, raftpb.MsgAppResp, 4, 13, false},
		{7, raftpb.MsgHeartbeatResp, 3, 0, false},
	}
	if len(got) != len(want) {
		t.Fatalf("sent to node 1: %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("message %d to node 1 = %+v, want %+v", i, got[i], want[i])
		}
	}
	if len(out[9]) != 1 || out[9][0].Msg.Index != 12 {
		t.Errorf("sent to node 9: %v", out[9])
	}
	if n := a.h.stats.AcksCoalesced.Load(); n != 2 {
		t.Errorf("AcksCoalesced = %d, want 2", n)
	}
}
