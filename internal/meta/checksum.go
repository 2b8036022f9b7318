package meta

import (
	"encoding/binary"
	"hash/crc32"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CheckpointCRC is the CRC32C (Castagnoli) a checkpoint row must carry. It
// covers exactly these bytes, big-endian, each variable-length field prefixed
// with its length so that no two different rows share an input:
//
//	be32(len(id)) id be32(kind) be32(len(phase)) phase be32(attempt)
//	be32(len(payload)) payload [be64(fence_group) if fence_group != 0]
//
// The fence group is appended only when set, so a row without one has the
// checksum it had before the field existed; the length prefixes make the
// trailer unambiguous. The timestamp is not covered: the applier sets it.
// The checksum exists so that a coordinator that resumes a migration after
// a crash never acts on a row that was corrupted anywhere between its
// writer and its reader.
func CheckpointCRC(c *metapb.Checkpoint) uint32 {
	var n [8]byte
	h := crc32.New(castagnoli)
	put := func(v uint32) {
		binary.BigEndian.PutUint32(n[:4], v)
		h.Write(n[:4])
	}
	put(uint32(len(c.GetId())))
	h.Write([]byte(c.GetId()))
	put(uint32(c.GetKind()))
	put(uint32(len(c.GetPhase())))
	h.Write([]byte(c.GetPhase()))
	put(c.GetAttempt())
	put(uint32(len(c.GetPayload())))
	h.Write(c.GetPayload())
	if g := c.GetFenceGroup(); g != 0 {
		binary.BigEndian.PutUint64(n[:], g)
		h.Write(n[:])
	}
	return h.Sum32()
}

// NewCheckpoint returns a checkpoint row with its checksum filled in and no
// fence group.
func NewCheckpoint(id string, kind metapb.MigrationKind, phase string, attempt uint32, payload []byte) *metapb.Checkpoint {
	return NewFencingCheckpoint(id, kind, phase, attempt, payload, 0)
}

// NewFencingCheckpoint returns a checkpoint row that holds data group
// fenceGroup (0: none; see Checkpoint.fence_group) with its checksum
// filled in.
func NewFencingCheckpoint(id string, kind metapb.MigrationKind, phase string, attempt uint32, payload []byte, fenceGroup uint64) *metapb.Checkpoint {
	c := &metapb.Checkpoint{Id: id, Kind: kind, Phase: phase, Attempt: attempt, Payload: payload, FenceGroup: fenceGroup}
	c.Crc32C = CheckpointCRC(c)
	return c
}
