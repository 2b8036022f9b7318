package meta

import (
	"bytes"
	"slices"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"
)

// genEntry draws entries over a small universe of ids, so that a sequence
// hits successes, no-ops and every kind of refusal: unknown and known
// tokens, nodes, groups, replicas, vShards in and out of range, good and
// corrupted checksums, batches (nested ones too), nil sub-messages.
func genEntry(nested bool) *rapid.Generator[*metapb.Entry] {
	return rapid.Custom(func(t *rapid.T) *metapb.Entry {
		node := rapid.Uint64Range(0, 8).Draw(t, "node")
		group := rapid.Uint64Range(0, 6).Draw(t, "group")
		replica := rapid.Uint64Range(0, 6).Draw(t, "replica")
		vs := rapid.SampledFrom([]uint32{0, 1, 5, 15, 16, 17, 1 << 31}).Draw(t, "vshard")
		tok := rapid.SampledFrom([]string{"a", "b", "c", ""}).Draw(t, "token")
		secret := HashSecret(rapid.SampledFrom([]string{"s1", "s2"}).Draw(t, "secret"))
		k := key(rapid.SampledFrom([]string{"k1", "k2", "k3"}).Draw(t, "key"))
		when := t0 + rapid.Int64Range(-hour, 2*hour).Draw(t, "expires")
		kinds := 20
		if nested {
			kinds = 19
		}
		switch rapid.IntRange(0, kinds-1).Draw(t, "kind") {
		case 0:
			cl := rapid.SampledFrom([]string{testCluster, "other"}).Draw(t, "cluster")
			v := rapid.SampledFrom([]uint32{16, 32, 24}).Draw(t, "vshards")
			return NewBootstrap(&metapb.ClusterSettings{ClusterId: cl, VshardCount: v, ReplicationFactor: 3}, &metapb.Node{PeerAddr: "n1:1", Zone: "z1"}, uint32(rapid.IntRange(0, 5).Draw(t, "groups")))
		case 1:
			return NewCreateToken(tok, secret, when)
		case 2:
			return NewRevokeToken(tok)
		case 3:
			return NewBeginJoin(tok, secret, k, "p:1", "a:1", rapid.SampledFrom([]string{"", "z1", "z2"}).Draw(t, "zone"))
		case 4:
			return NewActivateNode(node)
		case 5:
			return NewSetNodeState(node, metapb.NodeState(rapid.Int32Range(0, 5).Draw(t, "state")))
		case 6:
			return NewSetNodeAddrs(node, rapid.SampledFrom([]string{"", "p:2"}).Draw(t, "peer"), "a:2")
		case 7:
			return withMigration(t, NewAddReplica(group, node, metapb.Role(rapid.Int32Range(0, 2).Draw(t, "role"))))
		case 8:
			return withMigration(t, NewPromoteReplica(group, replica))
		case 9:
			return withMigration(t, NewRemoveReplica(group, replica))
		case 10:
			return NewSetLeaderHint(group, node)
		case 11:
			return NewSetRoute(vs, group, rapid.Uint64Range(0, 4).Draw(t, "epoch"))
		case 12:
			return NewPutGhost(vs, group, rapid.Uint64Range(0, 3).Draw(t, "epoch"), when)
		case 13:
			return NewDeleteGhost(vs)
		case 14:
			c := NewFencingCheckpoint(
				rapid.SampledFrom([]string{"m1", "m2", ""}).Draw(t, "id"),
				metapb.MigrationKind(rapid.Int32Range(0, 3).Draw(t, "mkind")),
				rapid.SampledFrom([]string{"copy", "cutover", ""}).Draw(t, "phase"),
				uint32(rapid.IntRange(0, 3).Draw(t, "attempt")),
				rapid.SliceOfN(rapid.Byte(), 0, 8).Draw(t, "payload"),
				rapid.SampledFrom([]uint64{0, 0, 1, 2, 99}).Draw(t, "fence group"))
			if rapid.IntRange(0, 4).Draw(t, "corrupt") == 0 {
				c.Crc32C ^= 1 << rapid.IntRange(0, 31).Draw(t, "bit")
			}
			return NewPutCheckpointIf(c, genExpect(t, true))
		case 15:
			return NewDeleteCheckpointIf(rapid.SampledFrom([]string{"m1", "m2", ""}).Draw(t, "id"), genExpect(t, false))
		case 16:
			// Nil sub-messages and odd versions.
			e := rapid.SampledFrom([]*metapb.Entry{
				{Version: 1},
				{Version: 1, Kind: &metapb.Entry_SetRoute{}},
				{Version: 1, Kind: &metapb.Entry_PutGhost{PutGhost: &metapb.PutGhost{}}},
				{Version: 1, Kind: &metapb.Entry_Bootstrap{Bootstrap: &metapb.Bootstrap{}}},
				{Version: 1, Kind: &metapb.Entry_Batch{}},
				{Version: 2, Kind: &metapb.Entry_ActivateNode{ActivateNode: &metapb.ActivateNode{NodeId: 2}}},
			}).Draw(t, "odd")
			return proto.Clone(e).(*metapb.Entry)
		case 17, 18:
			// A planner-like step that usually succeeds: join or place.
			if rapid.Bool().Draw(t, "joinstep") {
				return NewBatch(NewCreateToken(tok+"j", secret, t0+hour), NewBeginJoin(tok+"j", secret, k, "p:1", "", ""))
			}
			return NewAddReplica(group, node, metapb.Role_ROLE_LEARNER)
		default:
			return NewBatch(rapid.SliceOfN(genEntry(true), 0, 4).Draw(t, "members")...)
		}
	})
}

// withMigration sometimes marks a membership entry as a migration's.
func withMigration(t *rapid.T, e *metapb.Entry) *metapb.Entry {
	if id := rapid.SampledFrom([]string{"", "", "m1", "m2"}).Draw(t, "migration id"); id != "" {
		WithMigration(id, e)
	}
	return e
}

// genExpect draws a checkpoint write's expectation: none, absent, or a
// phase and attempt (sometimes invalid for the entry).
func genExpect(t *rapid.T, put bool) *metapb.CheckpointExpectation {
	switch rapid.IntRange(0, 3).Draw(t, "expect") {
	case 0:
		return nil
	case 1:
		if put || rapid.IntRange(0, 3).Draw(t, "absent on delete") == 0 {
			return ExpectAbsent()
		}
	}
	return ExpectRow(rapid.SampledFrom([]string{"copy", "cutover", ""}).Draw(t, "expected phase"), uint32(rapid.IntRange(0, 3).Draw(t, "expected attempt")))
}

// step is one input: an entry, or raw bytes that go through DecodeEntry
// (garbage, or a valid encoding with a byte flipped).
type step struct {
	e   *metapb.Entry
	raw []byte
	now int64
}

func genSteps(t *rapid.T) []step {
	n := rapid.IntRange(1, 40).Draw(t, "steps")
	now := t0
	var out []step
	for range n {
		now += rapid.Int64Range(0, hour/2).Draw(t, "dt")
		s := step{now: now}
		switch rapid.IntRange(0, 9).Draw(t, "input") {
		case 0:
			s.raw = rapid.SliceOfN(rapid.Byte(), 0, 64).Draw(t, "garbage")
		case 1:
			b, _ := proto.Marshal(genEntry(false).Draw(t, "entry"))
			if len(b) > 0 {
				b[rapid.IntRange(0, len(b)-1).Draw(t, "at")] ^= byte(rapid.IntRange(1, 255).Draw(t, "flip"))
			}
			s.raw = b
		default:
			s.e = genEntry(false).Draw(t, "entry")
		}
		out = append(out, s)
	}
	return out
}

// run applies steps from start, checking the invariants after each, and
// returns the encoded state and result after every step.
func run(t *rapid.T, start *metapb.State, steps []step) (states, results [][]byte) {
	st := start
	quarantined := QuarantinedCheckpoints(st)
	for i, s := range steps {
		e := s.e
		if s.raw != nil {
			var err error
			if e, err = DecodeEntry(s.raw); err != nil {
				if codeOf(err) == metapb.Code_CODE_INTERNAL {
					t.Fatalf("step %d: decode: %v", i, err)
				}
				states, results = append(states, nil), append(results, EncodeResult(resultOf(err)))
				continue
			}
		}
		before, _ := EncodeState(st)
		next, res, _, err := Apply(st, e, s.now)
		if after, _ := EncodeState(st); !bytes.Equal(before, after) {
			t.Fatalf("step %d: Apply modified its input", i)
		}
		if res.GetCode() != codeOf(err) || res.GetCode() == metapb.Code_CODE_INTERNAL {
			t.Fatalf("step %d: result %v, error %v", i, res, err)
		}
		if err != nil {
			if next != st {
				t.Fatalf("step %d: refused entry returned another state", i)
			}
		} else {
			if next.GetAppliedEntries() != st.GetAppliedEntries()+1 {
				t.Fatalf("step %d: applied entries %d after %d", i, next.GetAppliedEntries(), st.GetAppliedEntries())
			}
			if next.GetNextNodeId() < st.GetNextNodeId() || next.GetRoutingVersion() < st.GetRoutingVersion() {
				t.Fatalf("step %d: a counter went back", i)
			}
		}
		st = next
		b, err := EncodeState(st)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if _, err := DecodeState(b); err != nil {
			t.Fatalf("step %d: the applied state is invalid: %v", i, err)
		}
		// Apply never makes a row quarantined; only deletions remove one.
		for _, id := range QuarantinedCheckpoints(st) {
			if !slices.Contains(quarantined, id) {
				t.Fatalf("step %d: Apply stored a quarantined row %q", i, id)
			}
		}
		quarantined = QuarantinedCheckpoints(st)
		states, results = append(states, b), append(results, EncodeResult(res))
	}
	return states, results
}

// Apply is deterministic and total: the same inputs from the same start
// give the same states and results, byte for byte; nothing panics; every
// state it produces is valid.
func TestPropertyApplyDeterministic(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var start *metapb.State
		if rapid.Bool().Draw(t, "bootstrapped") {
			start = base(t)
			if rapid.Bool().Draw(t, "a quarantined row") {
				// A row that held group 1 and rotted in storage.
				c := NewFencingCheckpoint("m1", 1, "copy", 1, []byte("x"), 1)
				c.Payload[0] ^= 1
				start.Migrations = map[string]*metapb.Checkpoint{"m1": c}
			}
		}
		steps := genSteps(t)
		s1, r1 := run(t, start, steps)
		s2, r2 := run(t, start, steps)
		for i := range s1 {
			if !bytes.Equal(s1[i], s2[i]) || !bytes.Equal(r1[i], r2[i]) {
				t.Fatalf("step %d: runs differ", i)
			}
		}
	})
}

// A corrupted checksum is refused with ErrBadChecksum and changes nothing,
// whatever the row and whatever bit is flipped.
func TestPropertyCorruptCheckpoint(t *testing.T) {
	st := base(t)
	st, _, _ = mustApply(t, st, NewPutCheckpoint(NewCheckpoint("m1", 1, "copy", 1, []byte("x"))), t0)
	rapid.Check(t, func(t *rapid.T) {
		c := NewCheckpoint(
			rapid.SampledFrom([]string{"m1", "m2"}).Draw(t, "id"),
			metapb.MigrationKind(rapid.Int32Range(1, 2).Draw(t, "kind")),
			rapid.StringN(1, 8, 8).Draw(t, "phase"),
			rapid.Uint32().Draw(t, "attempt"),
			rapid.SliceOfN(rapid.Byte(), 0, 32).Draw(t, "payload"))
		c.Crc32C ^= rapid.Uint32Range(1, ^uint32(0)).Draw(t, "flip")
		before, _ := EncodeState(st)
		next, res, eff, err := Apply(st, NewPutCheckpoint(c), t0)
		after, _ := EncodeState(next)
		if !bytes.Equal(before, after) || next != st || eff != nil {
			t.Fatal("a corrupted checkpoint changed the state")
		}
		if res.GetCode() != metapb.Code_CODE_BAD_CHECKSUM || codeOf(err) != metapb.Code_CODE_BAD_CHECKSUM {
			t.Fatalf("code %v, %v", res.GetCode(), err)
		}
	})
}

// DecodeState never panics and whatever it accepts can be applied to.
func TestPropertyDecodeStateGarbage(t *testing.T) {
	good, _ := EncodeState(base(t))
	rapid.Check(t, func(t *rapid.T) {
		b := bytes.Clone(good)
		for range rapid.IntRange(1, 4).Draw(t, "flips") {
			b[rapid.IntRange(0, len(b)-1).Draw(t, "at")] ^= byte(rapid.IntRange(1, 255).Draw(t, "x"))
		}
		st, err := DecodeState(b)
		if err != nil {
			return
		}
		_, res, _, _ := Apply(st, genEntry(false).Draw(t, "entry"), t0)
		if res.GetCode() == metapb.Code_CODE_INTERNAL {
			t.Fatalf("internal error: %s", res.GetMessage())
		}
	})
}
