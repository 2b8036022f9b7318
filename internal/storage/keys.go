package storage

import (
	"encoding/binary"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// Keyspace layout. Every key starts with a one-byte prefix naming its kind;
// integers are big-endian so that keys sort numerically. docs/storage.md
// documents the same table for operators.
//
//	0x01 group(8) 0x01 index(8)   Raft log entry (raftpb.Entry)
//	0x01 group(8) 0x02            Raft HardState
//	0x01 group(8) 0x03            truncated state: index(8) term(8); entries <= index are gone
//	0x02 group(8)                 applied state (see AppliedState), written in the same
//	                              batch as the state-machine changes it covers
//	0x03 group(8) vshard(4) 'u' … state-machine data of one vShard (keys relative to 'u')
//	0x03 group(8) vshard(4) 'c' … exactly-once client records: client(8) -> watermark,
//	                              live sequences and their small results
//	0x03 group(8) vshard(4) 'd' … exactly-once results too large for the client record:
//	                              client(8) seq(8) -> result
//	0x03 group(8) vshard(4) 'w' … client records of the earlier format, read, not written
//	0x04 name                     node-local records (node identity and the like)
//	0x05 group(8)                 replica tombstone: smallest replica ID still allowed here
//	0x06 group(8)                 local replica: ID(8) of this node's replica of group
//
// A group's whole replicated state is the single range 0x03 group(8), and one
// vShard's state is the single range 0x03 group(8) vshard(4): snapshots and
// vShard moves copy exactly one range and cannot miss a piece of state.
const (
	prefixRaft      byte = 0x01
	prefixApplied   byte = 0x02
	prefixState     byte = 0x03
	prefixNode      byte = 0x04
	prefixTombstone byte = 0x05
	prefixReplica   byte = 0x06

	raftSuffixEntry     byte = 0x01
	raftSuffixHardState byte = 0x02
	raftSuffixTruncated byte = 0x03

	// SubUser, SubClient, SubDedup and SubWatermark are the sub-areas of a
	// vShard. SubWatermark holds client records of the format before
	// SubClient's, still read (see internal/raftstore/dedup.go).
	SubUser      byte = 'u'
	SubClient    byte = 'c'
	SubDedup     byte = 'd'
	SubWatermark byte = 'w'
)

func raftKey(g ids.GroupID, suffix byte) []byte {
	k := make([]byte, 0, 18)
	k = append(k, prefixRaft)
	k = binary.BigEndian.AppendUint64(k, uint64(g))
	return append(k, suffix)
}

// entryKey appends the key of group g's log entry at index to dst.
func entryKey(dst []byte, g ids.GroupID, index uint64) []byte {
	dst = append(dst, prefixRaft)
	dst = binary.BigEndian.AppendUint64(dst, uint64(g))
	dst = append(dst, raftSuffixEntry)
	return binary.BigEndian.AppendUint64(dst, index)
}

func hardStateKey(g ids.GroupID) []byte { return raftKey(g, raftSuffixHardState) }
func truncatedKey(g ids.GroupID) []byte { return raftKey(g, raftSuffixTruncated) }

func replicaKey(g ids.GroupID) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixReplica}, uint64(g))
}

// raftRange is [start, end) of every key of group g's Raft storage.
func raftRange(g ids.GroupID) (start, end []byte) {
	start = append([]byte{prefixRaft}, binary.BigEndian.AppendUint64(nil, uint64(g))...)
	return start, prefixEnd(start)
}

func appliedKey(g ids.GroupID) []byte { return appendAppliedKey(nil, g) }

func appendAppliedKey(dst []byte, g ids.GroupID) []byte {
	return binary.BigEndian.AppendUint64(append(dst, prefixApplied), uint64(g))
}

// AppliedKey is the key of group g's applied state.
func AppliedKey(g ids.GroupID) []byte { return appliedKey(g) }

func tombstoneKey(g ids.GroupID) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixTombstone}, uint64(g))
}

// NodeKey is the key of a node-local record.
func NodeKey(name string) []byte { return append([]byte{prefixNode}, name...) }

// GroupStatePrefix is the prefix of all replicated state of group g.
func GroupStatePrefix(g ids.GroupID) []byte {
	return AppendGroupStatePrefix(make([]byte, 0, 9), g)
}

// AppendGroupStatePrefix appends GroupStatePrefix(g) to dst.
func AppendGroupStatePrefix(dst []byte, g ids.GroupID) []byte {
	return binary.BigEndian.AppendUint64(append(dst, prefixState), uint64(g))
}

// VShardPrefix is the prefix of all state of one vShard in group g.
func VShardPrefix(g ids.GroupID, vshard uint32) []byte {
	return binary.BigEndian.AppendUint32(AppendGroupStatePrefix(make([]byte, 0, 13), g), vshard)
}

// VShardSubPrefix is the prefix of one sub-area (SubUser, SubDedup,
// SubWatermark) of a vShard.
func VShardSubPrefix(g ids.GroupID, vshard uint32, sub byte) []byte {
	return AppendVShardSubPrefix(make([]byte, 0, 14), g, vshard, sub)
}

// AppendVShardSubPrefix appends VShardSubPrefix(g, vshard, sub) to dst: hot
// paths build keys in reused buffers with it.
func AppendVShardSubPrefix(dst []byte, g ids.GroupID, vshard uint32, sub byte) []byte {
	dst = binary.BigEndian.AppendUint32(AppendGroupStatePrefix(dst, g), vshard)
	return append(dst, sub)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil // p was all 0xff: no upper bound
}

// PrefixEnd is prefixEnd for other packages.
func PrefixEnd(p []byte) []byte { return prefixEnd(p) }
