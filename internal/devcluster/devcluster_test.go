package devcluster

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/testwatch"
)

func TestMain(m *testing.M) { testwatch.Main(m) }

func TestBootstrapThenRestartKeepsShapeAndData(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, dir, Shape{Nodes: 3, Groups: 4, VShards: 64, RF: 3}, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	if c.Restarted {
		t.Fatal("a fresh dir reported as restarted")
	}
	b, err := os.ReadFile(filepath.Join(dir, "endpoints"))
	if err != nil || string(b) != strings.Join(c.APIs, "\n")+"\n" || len(c.APIs) != 3 {
		t.Fatalf("endpoints file %q (%v), endpoints %v", b, err, c.Endpoints)
	}
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.SelfCheck(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	c, err = Start(ctx, dir, Shape{Nodes: 3, Groups: 8, VShards: 1024, RF: 3}, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if !c.Restarted || c.Shape.Groups != 4 || c.Shape.VShards != 64 {
		t.Fatalf("restart: restarted=%v shape=%+v, want the stored shape", c.Restarted, c.Shape)
	}
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Groups) != 5 || len(st.Nodes) != 3 {
		t.Fatalf("after restart: %d groups (want the metadata group and 4), %d nodes", len(st.Groups), len(st.Nodes))
	}
	for _, g := range st.Groups {
		if len(g.Voters) != 3 {
			t.Fatalf("group after restart: %+v", g)
		}
	}
	if err := c.SelfCheck(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestShapeValidation(t *testing.T) {
	for _, s := range []Shape{
		{Nodes: 0, Groups: 1, VShards: 16, RF: 1},
		{Nodes: 3, Groups: 1, VShards: 100, RF: 3},
		{Nodes: 3, Groups: 32, VShards: 16, RF: 3},
		{Nodes: 2, Groups: 1, VShards: 16, RF: 3},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("shape %+v accepted", s)
		}
	}
}
