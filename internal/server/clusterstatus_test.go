package server

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

func TestMigrationInfosMarkQuarantinedRows(t *testing.T) {
	st := testState(t, 1, 2, 1)
	st = hold(t, st, "a-held", 1)
	st = mustApply(t, st, meta.NewPutCheckpoint(meta.NewCheckpoint("b-bad", metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE, "copy", 2, []byte("x"))))
	st = hold(t, st, "c-bad-fence", 2)
	st = proto.Clone(st).(*metapb.State)
	st.GetMigrations()["b-bad"].Crc32C ^= 1
	st.GetMigrations()["c-bad-fence"].Payload = []byte("tampered")

	now := time.Unix(0, testNow).Add(3 * time.Second)
	got := migrationInfos(st, now)
	if len(got) != 3 {
		t.Fatalf("migrationInfos = %+v", got)
	}
	a, b, c := got[0], got[1], got[2]
	if a.ID != "a-held" || a.Quarantined || a.Error != "" || a.Group != 1 || a.Kind != "replica_move" || a.Phase != "add_learner" || a.Attempt != 1 || a.AgeSeconds != 3 ||
		a.From != 1 || a.To != 9 || a.ElapsedSeconds != 3 {
		t.Fatalf("sound row: %+v", a)
	}
	if b.ID != "b-bad" || !b.Quarantined || !strings.Contains(b.Error, "crc32c") || b.Group != 0 || b.Kind != "vshard_move" || b.Phase != "copy" || b.Attempt != 2 {
		t.Fatalf("corrupt row: %+v", b)
	}
	if c.ID != "c-bad-fence" || !c.Quarantined || c.Error == "" || c.Group != 0 {
		t.Fatalf("corrupt fencing row (holds nothing): %+v", c)
	}

	// The JSON keeps the fixed names and adds quarantined and error.
	raw, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]any
	if err := json.Unmarshal(raw, &rows); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "kind", "phase", "attempt", "age_seconds", "quarantined"} {
		for i, r := range rows {
			if _, ok := r[k]; !ok {
				t.Fatalf("row %d lacks %q: %s", i, k, raw)
			}
		}
	}
	if rows[0]["quarantined"] != false || rows[0]["error"] != nil || rows[0]["group"] != float64(1) {
		t.Fatalf("sound row JSON: %v", rows[0])
	}
	if rows[1]["quarantined"] != true || rows[1]["error"] == nil {
		t.Fatalf("corrupt row JSON: %v", rows[1])
	}
	if len(migrationInfos(testState(t, 1, 1, 1), now)) != 0 || migrationInfos(testState(t, 1, 1, 1), now) == nil {
		t.Fatal("no migrations: want an empty, non-nil list")
	}
}
