package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// Entry payloads. Every normal Raft entry this host proposes starts with a
// kind byte and a fixed header; the header identifies the proposal (so the
// proposing node can hand the result back) and carries what every replica
// needs to apply the command identically.
//
//	kind(1)=1 proposer(8) proposal(8) timestamp(8) vshard(4) client(8) seq(8) ackedBelow(8) payload
//
// Empty entries (appended by a new leader) have no payload at all. A payload
// that fails to decode is skipped by every replica alike and reported to its
// proposer as malformed; it never stops the group.
const (
	kindCommand byte = 1

	commandHeaderLen = 1 + 8 + 8 + 8 + 4 + 8 + 8 + 8
)

var errMalformedEntry = errors.New("raftstore: malformed entry")

// command is a decoded command entry.
type command struct {
	proposer   ids.NodeID
	proposal   uint64
	timestamp  int64
	vshard     uint32
	client     uint64
	seq        uint64
	ackedBelow uint64
	payload    []byte
}

func encodeCommand(dst []byte, c *command) []byte {
	dst = append(dst, kindCommand)
	dst = binary.BigEndian.AppendUint64(dst, uint64(c.proposer))
	dst = binary.BigEndian.AppendUint64(dst, c.proposal)
	dst = binary.BigEndian.AppendUint64(dst, uint64(c.timestamp))
	dst = binary.BigEndian.AppendUint32(dst, c.vshard)
	dst = binary.BigEndian.AppendUint64(dst, c.client)
	dst = binary.BigEndian.AppendUint64(dst, c.seq)
	dst = binary.BigEndian.AppendUint64(dst, c.ackedBelow)
	return append(dst, c.payload...)
}

// decodeCommand parses a command entry. The payload aliases b.
func decodeCommand(b []byte) (command, error) {
	var c command
	if len(b) < commandHeaderLen || b[0] != kindCommand {
		return c, fmt.Errorf("%w: %d bytes, kind %v", errMalformedEntry, len(b), firstByte(b))
	}
	c.proposer = ids.NodeID(binary.BigEndian.Uint64(b[1:]))
	c.proposal = binary.BigEndian.Uint64(b[9:])
	c.timestamp = int64(binary.BigEndian.Uint64(b[17:]))
	c.vshard = binary.BigEndian.Uint32(b[25:])
	c.client = binary.BigEndian.Uint64(b[29:])
	c.seq = binary.BigEndian.Uint64(b[37:])
	c.ackedBelow = binary.BigEndian.Uint64(b[45:])
	c.payload = b[commandHeaderLen:]
	return c, nil
}

// proposalOf returns who proposed an entry, without decoding the rest. It
// works for command entries and for configuration-change contexts, which
// start with the same proposer and proposal fields.
func proposalOf(b []byte) (ids.NodeID, uint64, bool) {
	if len(b) < 17 {
		return 0, 0, false
	}
	return ids.NodeID(binary.BigEndian.Uint64(b[1:])), binary.BigEndian.Uint64(b[9:]), true
}

func firstByte(b []byte) any {
	if len(b) == 0 {
		return "none"
	}
	return b[0]
}

// Configuration-change context: ConfChangeV2.Context carries the proposer
// (to hand back the outcome) and the node of every replica the change adds,
// so that every replica learns where the new member lives from the log.
//
//	kind(1)=2 proposer(8) proposal(8) count(uvarint) {replica(uvarint) node(uvarint)}*
const kindConfChange byte = 2

type confChangeContext struct {
	proposer ids.NodeID
	proposal uint64
	added    []replicaPlacement
}

type replicaPlacement struct {
	Replica ids.ReplicaID
	Node    ids.NodeID
}

func encodeConfChangeContext(c *confChangeContext) []byte {
	dst := []byte{kindConfChange}
	dst = binary.BigEndian.AppendUint64(dst, uint64(c.proposer))
	dst = binary.BigEndian.AppendUint64(dst, c.proposal)
	dst = binary.AppendUvarint(dst, uint64(len(c.added)))
	for _, a := range c.added {
		dst = binary.AppendUvarint(dst, uint64(a.Replica))
		dst = binary.AppendUvarint(dst, uint64(a.Node))
	}
	return dst
}

func decodeConfChangeContext(b []byte) (confChangeContext, error) {
	var c confChangeContext
	if len(b) < 17 || b[0] != kindConfChange {
		return c, fmt.Errorf("%w: conf change context", errMalformedEntry)
	}
	c.proposer = ids.NodeID(binary.BigEndian.Uint64(b[1:]))
	c.proposal = binary.BigEndian.Uint64(b[9:])
	b = b[17:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k)/2 {
		return c, fmt.Errorf("%w: conf change context count", errMalformedEntry)
	}
	b = b[k:]
	c.added = make([]replicaPlacement, 0, n)
	for range n {
		r, k1 := binary.Uvarint(b)
		if k1 <= 0 {
			return c, fmt.Errorf("%w: conf change context replica", errMalformedEntry)
		}
		b = b[k1:]
		nd, k2 := binary.Uvarint(b)
		if k2 <= 0 {
			return c, fmt.Errorf("%w: conf change context node", errMalformedEntry)
		}
		b = b[k2:]
		c.added = append(c.added, replicaPlacement{Replica: ids.ReplicaID(r), Node: ids.NodeID(nd)})
	}
	if len(b) != 0 {
		return c, fmt.Errorf("%w: conf change context trailing bytes", errMalformedEntry)
	}
	return c, nil
}

// Log truncation entry, proposed by a leader whose followers all hold the log
// up to index (see maybeProposeTruncation); every replica truncates its own
// log there when it applies the entry.
//
//	kind(1)=4 index(8)
const (
	kindTruncate   byte = 4
	truncateLength      = 1 + 8
)

func encodeTruncate(index uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{kindTruncate}, index)
}

func decodeTruncate(b []byte) (uint64, error) {
	if len(b) != truncateLength || b[0] != kindTruncate {
		return 0, fmt.Errorf("%w: truncation entry of %d bytes", errMalformedEntry, len(b))
	}
	return binary.BigEndian.Uint64(b[1:]), nil
}
