package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestCmdRoundTrip(t *testing.T) {
	k, v, ok := decodeCmd(encodeCmd([]byte("key"), []byte("value")))
	if !ok || string(k) != "key" || string(v) != "value" {
		t.Fatalf("decode: %q %q %v", k, v, ok)
	}
	if _, _, ok := decodeCmd([]byte{0, 9, 'a'}); ok {
		t.Fatal("a short command decoded")
	}
}

func TestParseShapes(t *testing.T) {
	s, err := parseShapes("48x256, 1x16")
	if err != nil || len(s) != 2 || s[0] != (shape{48, 256}) || s[1] != (shape{1, 16}) {
		t.Fatalf("%v %v", s, err)
	}
	for _, bad := range []string{"48", "0x1", "x", "4x-1"} {
		if _, err := parseShapes(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestDragonboatSnapshotRoundTrip(t *testing.T) {
	a := &dbSM{m: map[string][]byte{}}
	for _, k := range []string{"a", "bb", ""} {
		if _, err := a.Update(encodeCmd([]byte(k), []byte("v-"+k))); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := a.SaveSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	b := &dbSM{}
	if err := b.RecoverFromSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(b.m) != 3 || string(b.m["bb"]) != "v-bb" || string(b.m[""]) != "v-" {
		t.Fatalf("recovered %q", b.m)
	}
}

// TestManyGroupsBothSystems runs the many-group mode on a small shape for
// both systems: both must make progress without errors, and stop every
// goroutine they started.
func TestManyGroupsBothSystems(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 3 nodes of each system")
	}
	defer goleak.VerifyNone(t)
	o := options{
		root: t.TempDir(), rounds: 1, keys: 100, valueSize: 256,
		warmup: 300 * time.Millisecond, duration: time.Second, pause: 10 * time.Millisecond, opTimeout: 10 * time.Second, idle: 100 * time.Millisecond,
	}
	// The default 100ms tick (elections after 1-2s of silence): no election
	// on a busy machine, which would fail proposals.
	m := mgOptions{shapes: "4x8", systems: "nodedb,dragonboat", tick: 100 * time.Millisecond, dragonboatTLS: true}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	rep, err := runManyGroups(ctx, o, m, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	if len(rep.Results) != 2 {
		t.Fatalf("%d result rows, want 2", len(rep.Results))
	}
	for _, r := range rep.Results {
		if r.Ops == 0 || r.Errors != 0 {
			t.Errorf("%s %s: %d ops, %d errors (%s)", r.Workload, r.System, r.Ops, r.Errors, r.FirstError)
		}
		if r.ServerCPU <= 0 {
			t.Errorf("%s %s: process CPU %v", r.Workload, r.System, r.ServerCPU)
		}
	}
	if len(rep.Ratios) != 1 || len(rep.Targets) != 1 {
		t.Errorf("ratios %v targets %v", rep.Ratios, rep.Targets)
	}
	if !strings.Contains(out.String(), "ours/dragonboat") {
		t.Errorf("no ratios in the report:\n%s", out.String())
	}
}

func TestMachineBusyGrows(t *testing.T) {
	b0 := machineBusy()
	end := time.Now().Add(100 * time.Millisecond)
	for time.Now().Before(end) {
	}
	if b1 := machineBusy(); b0 <= 0 || b1-b0 < 0.05 {
		t.Errorf("machine busy %v then %v after 100ms of spinning", b0, b1)
	}
}

func TestTargetWantsNoErrors(t *testing.T) {
	rows := []row{
		{Workload: "4g/8p", System: "nodedb", OpsPerSec: 200},
		{Workload: "4g/8p", System: "dragonboat", OpsPerSec: 100},
	}
	_, ts := mgRatiosAndTargets(rows, []shape{{4, 8}})
	if len(ts) != 1 || !ts[0].Holds {
		t.Fatalf("%+v", ts)
	}
	rows[0].Errors = 1
	if _, ts = mgRatiosAndTargets(rows, []shape{{4, 8}}); ts[0].Holds {
		t.Fatalf("holds with errors: %+v", ts)
	}
}
