package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// batchVersion is the first byte of an encoded message batch. A decoder that
// sees another value refuses the batch rather than guessing.
const batchVersion = 1

// MaxBatchMessages bounds the number of messages a decoder accepts in one
// batch, so a hostile count cannot make it allocate a huge slice.
const MaxBatchMessages = 1 << 16

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("transport: malformed batch")

// EncodeBatch appends the wire form of msgs to dst:
//
//	version(1) count(uvarint) { group(uvarint) len(uvarint) raftpb.Message(len) }*
func EncodeBatch(dst []byte, msgs []Message) ([]byte, error) {
	dst = append(dst, batchVersion)
	dst = binary.AppendUvarint(dst, uint64(len(msgs)))
	for i := range msgs {
		m := &msgs[i]
		dst = binary.AppendUvarint(dst, uint64(m.Group))
		n := m.Msg.Size()
		dst = binary.AppendUvarint(dst, uint64(n))
		start := len(dst)
		dst = slices.Grow(dst, n)[:start+n]
		if _, err := m.Msg.MarshalTo(dst[start:]); err != nil {
			return nil, fmt.Errorf("encode raft message for %s: %w", m.Group, err)
		}
	}
	return dst, nil
}

// DecodeBatch parses a batch produced by EncodeBatch. It validates every
// length against the bytes actually present before allocating, refuses
// message types that must never cross the network, and copies all payloads
// out of b, so b may be reused after it returns.
func DecodeBatch(b []byte) ([]Message, error) {
	if len(b) == 0 || b[0] != batchVersion {
		return nil, fmt.Errorf("%w: unknown version", ErrMalformed)
	}
	b = b[1:]
	count, n := binary.Uvarint(b)
	if n <= 0 {
		return nil, fmt.Errorf("%w: bad count", ErrMalformed)
	}
	b = b[n:]
	// Every message takes at least 2 bytes (group and length), which bounds
	// count by the input size before anything is allocated.
	if count > MaxBatchMessages || count > uint64(len(b))/2 {
		return nil, fmt.Errorf("%w: count %d exceeds what %d bytes can hold", ErrMalformed, count, len(b))
	}
	// Grow as messages actually decode: the count is only a claim.
	msgs := make([]Message, 0, min(count, 64))
	for i := range int(count) {
		msgs = append(msgs, Message{})
		g, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, fmt.Errorf("%w: message %d: bad group", ErrMalformed, i)
		}
		b = b[n:]
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return nil, fmt.Errorf("%w: message %d: bad length", ErrMalformed, i)
		}
		b = b[n:]
		msgs[i].Group = ids.GroupID(g)
		if err := msgs[i].Msg.Unmarshal(b[:l]); err != nil {
			return nil, fmt.Errorf("%w: message %d: %v", ErrMalformed, i, err)
		}
		if err := ValidateRemote(&msgs[i].Msg); err != nil {
			return nil, fmt.Errorf("%w: message %d: %v", ErrMalformed, i, err)
		}
		b = b[l:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(b))
	}
	return msgs, nil
}

// ValidateRemote refuses Raft messages that a peer must never send: local
// message types (which would let a peer drive this node's elections or
// storage, or make it forget its leader), proposals (proposal forwarding is off: clients are routed to the
// leader instead) and snapshots (they travel on snapshot streams, checksummed,
// with their data).
func ValidateRemote(m *raftpb.Message) error {
	switch m.Type {
	case raftpb.MsgApp, raftpb.MsgAppResp, raftpb.MsgVote, raftpb.MsgVoteResp,
		raftpb.MsgHeartbeat, raftpb.MsgHeartbeatResp, raftpb.MsgTransferLeader,
		raftpb.MsgTimeoutNow, raftpb.MsgReadIndex, raftpb.MsgReadIndexResp,
		raftpb.MsgPreVote, raftpb.MsgPreVoteResp:
	default:
		return fmt.Errorf("message type %s not accepted from the network", m.Type)
	}
	if m.From == 0 || m.To == 0 {
		return errors.New("message without sender or recipient")
	}
	if m.Snapshot != nil {
		return errors.New("snapshot carried outside a snapshot stream")
	}
	if len(m.Responses) != 0 {
		return errors.New("local storage responses carried over the network")
	}
	return nil
}
