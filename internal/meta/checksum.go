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
//	be32(len(payload)) payload
//
// The timestamp is not covered: the applier sets it. The checksum exists so
// that a coordinator that resumes a migration after a crash never acts on a
// row that was corrupted anywhere between its writer and its reader.
func CheckpointCRC(c *metapb.Checkpoint) uint32 {
	var n [4]byte
	h := crc32.New(castagnoli)
	put := func(v uint32) {
		binary.BigEndian.PutUint32(n[:], v)
		h.Write(n[:])
	}
	put(uint32(len(c.GetId())))
	h.Write([]byte(c.GetId()))
	put(uint32(c.GetKind()))
	put(uint32(len(c.GetPhase())))
	h.Write([]byte(c.GetPhase()))
	put(c.GetAttempt())
	put(uint32(len(c.GetPayload())))
	h.Write(c.GetPayload())
	return h.Sum32()
}

// NewCheckpoint returns a checkpoint row with its checksum filled in.
func NewCheckpoint(id string, kind metapb.MigrationKind, phase string, attempt uint32, payload []byte) *metapb.Checkpoint {
	c := &metapb.Checkpoint{Id: id, Kind: kind, Phase: phase, Attempt: attempt, Payload: payload}
	c.Crc32C = CheckpointCRC(c)
	return c
}
