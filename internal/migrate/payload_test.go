package migrate

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"pgregory.net/rapid"
)

func TestPhaseNamesAreStable(t *testing.T) {
	want := map[Phase]string{
		PhaseAddLearner: "add_learner", PhaseCatchUp: "catch_up", PhaseTransferLeader: "transfer_leader",
		PhasePromote: "promote", PhaseComplete: "complete", PhaseAborting: "aborting",
	}
	if len(Phases) != len(want) {
		t.Fatalf("%d phases, want %d", len(Phases), len(want))
	}
	for _, p := range Phases {
		if p.String() != want[p] || !p.Valid() {
			t.Fatalf("phase %d is %q, want %q", p, p, want[p])
		}
		if q, ok := ParsePhase(want[p]); !ok || q != p {
			t.Fatalf("parse %q: %v %v", want[p], q, ok)
		}
	}
	for _, s := range []string{"", "Catch_up", "catch-up", "Phase(0)"} {
		if p, ok := ParsePhase(s); ok {
			t.Fatalf("parse %q: %v", s, p)
		}
	}
	if PhaseUnknown.Valid() || Phase(99).Valid() || Phase(99).String() != "Phase(99)" {
		t.Fatal("invalid phases")
	}
}

func TestEncodeIsReadableJSON(t *testing.T) {
	m := move(1, 1, tL).WithError("learner lag 70")
	got := string(m.Encode())
	want := `{"v":1,"group":7,"from":1,"to":4,"outgoing_replica":1,"learner_replica":4,"leader_at_start":1,"started_unix_nanos":1700000000000000000,"last_error":"learner lag 70"}`
	if got != want {
		t.Fatalf("encoding\n%s\nwant\n%s", got, want)
	}
	back, err := DecodeReplicaMove([]byte(got))
	if err != nil || back != m {
		t.Fatalf("decode: %+v %v", back, err)
	}
}

func TestDecodeReplicaMoveRefuses(t *testing.T) {
	good := string(move(1, 1, tL).Encode())
	edit := func(from, to string) []byte {
		if !strings.Contains(good, from) {
			t.Fatalf("%q not in %s", from, good)
		}
		return []byte(strings.Replace(good, from, to, 1))
	}
	cases := []struct {
		name    string
		payload []byte
		code    metapb.Code
	}{
		{"empty", nil, metapb.Code_CODE_MALFORMED},
		{"not JSON", []byte("\x00\x01"), metapb.Code_CODE_MALFORMED},
		{"null", []byte("null"), metapb.Code_CODE_UNSUPPORTED_VERSION},
		{"array", []byte("[1]"), metapb.Code_CODE_MALFORMED},
		{"too large", bytes.Repeat([]byte(" "), MaxPayloadBytes+1), metapb.Code_CODE_TOO_LARGE},
		{"unknown field", edit(`"v":1,`, `"v":1,"x":2,`), metapb.Code_CODE_MALFORMED},
		{"missing field", edit(`,"last_error":""`, ``), metapb.Code_CODE_MALFORMED},
		{"duplicate key", edit(`"v":1,`, `"v":1,"v":1,`), metapb.Code_CODE_MALFORMED},
		{"spacing", edit(`"v":1,`, `"v": 1,`), metapb.Code_CODE_MALFORMED},
		{"trailing bytes", append([]byte(good), "{}"...), metapb.Code_CODE_MALFORMED},
		{"negative", edit(`"group":7`, `"group":-7`), metapb.Code_CODE_MALFORMED},
		{"fraction", edit(`"group":7`, `"group":7.5`), metapb.Code_CODE_MALFORMED},
		{"overflow", edit(`"group":7`, `"group":18446744073709551616`), metapb.Code_CODE_MALFORMED},
		{"string number", edit(`"group":7`, `"group":"7"`), metapb.Code_CODE_MALFORMED},
		{"version 2", edit(`"v":1`, `"v":2`), metapb.Code_CODE_UNSUPPORTED_VERSION},
		{"group 0", edit(`"group":7`, `"group":0`), metapb.Code_CODE_INVALID_ARGUMENT},
		{"from 0", edit(`"from":1`, `"from":0`), metapb.Code_CODE_INVALID_ARGUMENT},
		{"to 0", edit(`"to":4`, `"to":0`), metapb.Code_CODE_INVALID_ARGUMENT},
		{"from is to", edit(`"to":4`, `"to":1`), metapb.Code_CODE_INVALID_ARGUMENT},
		{"outgoing 0", edit(`"outgoing_replica":1`, `"outgoing_replica":0`), metapb.Code_CODE_INVALID_ARGUMENT},
		{"learner is outgoing", edit(`"learner_replica":4`, `"learner_replica":1`), metapb.Code_CODE_INVALID_ARGUMENT},
		{"leader at start is the target", edit(`"leader_at_start":1`, `"leader_at_start":4`), metapb.Code_CODE_INVALID_ARGUMENT},
		{"no start time", edit(`"started_unix_nanos":1700000000000000000`, `"started_unix_nanos":0`), metapb.Code_CODE_INVALID_ARGUMENT},
		{"long error", edit(`"last_error":""`, `"last_error":"`+strings.Repeat("e", MaxLastErrorBytes+1)+`"`), metapb.Code_CODE_INVALID_ARGUMENT},
		{"invalid UTF-8 error", edit(`"last_error":""`, "\"last_error\":\"\xff\""), metapb.Code_CODE_MALFORMED},
	}
	for _, c := range cases {
		m, err := DecodeReplicaMove(c.payload)
		var e *Error
		if !errors.As(err, &e) || e.Code != c.code {
			t.Fatalf("%s: %+v, %v; want code %v", c.name, m, err, c.code)
		}
		if m != (ReplicaMove{}) {
			t.Fatalf("%s: refused payload returned %+v", c.name, m)
		}
	}
}

func TestWithErrorClipsAndSanitizes(t *testing.T) {
	m := move(1, 1, tL).WithError(strings.Repeat("é", MaxLastErrorBytes) + "\xff")
	if len(m.LastError) > MaxLastErrorBytes || m.Validate() != nil {
		t.Fatalf("last error %d bytes, %v", len(m.LastError), m.Validate())
	}
	if _, err := DecodeReplicaMove(m.Encode()); err != nil {
		t.Fatal(err)
	}
}

func TestParseRow(t *testing.T) {
	m := move(1, 1, tL)
	if p, got, err := ParseRow(Checkpoint("a", PhasePromote, 2, m)); err != nil || p != PhasePromote || got != m {
		t.Fatalf("good row: %v %+v %v", p, got, err)
	}
	bad := Checkpoint("a", PhasePromote, 2, m)
	bad.Payload = bytes.Clone(bad.Payload)
	bad.Payload[10] ^= 1
	if _, _, err := ParseRow(bad); !errors.Is(err, meta.ErrBadChecksum) {
		t.Fatalf("flipped payload bit: %v", err)
	}
	for _, c := range []*metapb.Checkpoint{
		nil,
		meta.NewCheckpoint("a", metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE, "promote", 1, m.Encode()),
		meta.NewCheckpoint("a", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "promoted", 1, m.Encode()),
		meta.NewCheckpoint("a", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "promote", 1, []byte("{}")),
		Checkpoint("a", PhaseCatchUp, 1, move(1, 1, 0)),
		// A live row must hold its move's group, nothing else.
		meta.NewCheckpoint("a", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "catch_up", 1, m.Encode()),
		meta.NewFencingCheckpoint("a", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "aborting", 1, m.Encode(), tg+1),
		meta.NewFencingCheckpoint("a", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "complete", 1, m.Encode(), tg+1),
	} {
		if _, _, err := ParseRow(c); err == nil || errors.Is(err, meta.ErrBadChecksum) {
			t.Fatalf("row %v: %v", c, err)
		}
	}
	// Every row holds the move's group but the complete one; a complete
	// row that still does is accepted.
	for _, p := range Phases {
		if c, want := Checkpoint("a", p, 1, m), map[bool]uint64{true: 0, false: tg}[p == PhaseComplete]; c.GetFenceGroup() != want {
			t.Fatalf("%v row holds group %d, want %d", p, c.GetFenceGroup(), want)
		}
	}
	held := meta.NewFencingCheckpoint("a", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "complete", 1, m.Encode(), tg)
	if p, _, err := ParseRow(held); err != nil || p != PhaseComplete {
		t.Fatalf("complete row holding its group: %v %v", p, err)
	}
}

// Any valid move survives encoding; decoding is the inverse.
func TestPropertyPayloadRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := ReplicaMove{
			Version:          PayloadVersion,
			Group:            rapid.Uint64Min(1).Draw(t, "group"),
			From:             rapid.Uint64Min(1).Draw(t, "from"),
			Outgoing:         rapid.Uint64Min(1).Draw(t, "outgoing"),
			Learner:          rapid.Uint64().Draw(t, "learner"),
			LeaderAtStart:    rapid.Uint64().Draw(t, "leader"),
			StartedUnixNanos: rapid.Int64Min(1).Draw(t, "started"),
		}
		m.To = m.From + rapid.Uint64Range(1, 100).Draw(t, "to")
		if m.To == 0 || m.Learner == m.Outgoing || m.LeaderAtStart == m.To {
			t.Skip("invalid by construction")
		}
		m = m.WithError(rapid.String().Draw(t, "error"))
		got, err := DecodeReplicaMove(m.Encode())
		if err != nil || got != m {
			t.Fatalf("round trip %+v: %+v, %v", m, got, err)
		}
	})
}

// FuzzDecodeReplicaMove: no input panics; what decodes is valid and is
// exactly its own canonical encoding.
func FuzzDecodeReplicaMove(f *testing.F) {
	f.Add(move(1, 1, tL).Encode())
	f.Add(move(2, 0, 0).WithError("x").Encode())
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"v":1,"group":7,"from":1,"to":4,"outgoing_replica":1,"learner_replica":4,"leader_at_start":1,"started_unix_nanos":1,"last_error":"\u00e9"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeReplicaMove(b)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("untyped error %T %v", err, err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("decoded an invalid move %+v: %v", m, err)
		}
		if !bytes.Equal(m.Encode(), b) {
			t.Fatalf("decoded non-canonical %q", b)
		}
	})
}
