package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParsePeers(t *testing.T) {
	got, err := ParsePeers("2=127.0.0.1:2, 1=host:1,3=[::1]:3")
	if err != nil || len(got) != 3 || got[1] != "host:1" || got[3] != "[::1]:3" {
		t.Fatalf("ParsePeers = %v, %v", got, err)
	}
	for _, bad := range []string{"", "1", "1=nohostport", "0=a:1", "x=a:1", "1=a:1,1=a:2", "1=a:1,3=a:3", "2=a:2"} {
		if _, err := ParsePeers(bad); err == nil {
			t.Errorf("ParsePeers(%q) accepted", bad)
		}
	}
}

func freeAddrs(t *testing.T, n int) map[ids.NodeID]string {
	out := map[ids.NodeID]string{}
	for i := 1; i <= n; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out[ids.NodeID(i)] = pc.LocalAddr().String()
		pc.Close()
	}
	return out
}

func newCA(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteCA(dir, ca); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestFirstStartValidation(t *testing.T) {
	caDir := newCA(t)
	peers := freeAddrs(t, 3)
	good := Config{NodeID: 1, Peers: peers, Layout: Layout{Groups: 2, VShards: 16, RF: 3}, CADir: caDir}
	for name, mod := range map[string]func(*Config){
		"no node id":      func(c *Config) { c.NodeID = 0 },
		"not in peers":    func(c *Config) { c.NodeID = 4 },
		"no peers":        func(c *Config) { c.Peers = nil },
		"rf above nodes":  func(c *Config) { c.Layout.RF = 4 },
		"bad vshards":     func(c *Config) { c.Layout.VShards = 100 },
		"too many groups": func(c *Config) { c.Layout.Groups = 17 },
		"no ca":           func(c *Config) { c.CADir = "" },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := good
			cfg.Dir = t.TempDir()
			mod(&cfg)
			s, err := Start(cfg)
			if err == nil {
				s.Stop()
				t.Fatal("accepted")
			}
			if _, err := os.Stat(filepath.Join(cfg.Dir, storedFile)); err == nil {
				t.Fatal("a refused start recorded the node")
			}
		})
	}
}

func startCluster(t *testing.T) ([]*Server, []string) {
	caDir := newCA(t)
	peers := freeAddrs(t, 3)
	root := t.TempDir()
	var servers []*Server
	var dirs []string
	for i := 1; i <= 3; i++ {
		dir := filepath.Join(root, fmt.Sprintf("n%d", i))
		s, err := Start(Config{Dir: dir, NodeID: ids.NodeID(i), Peers: peers, CADir: caDir,
			Layout: Layout{Groups: 3, VShards: 64, RF: 3}, TickInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, s)
		dirs = append(dirs, dir)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			if s != nil {
				s.Stop()
			}
		}
	})
	return servers, dirs
}

func waitLeaders(ctx context.Context, t *testing.T, servers []*Server, groups int) {
	t.Helper()
	for {
		led := 0
		for g := 1; g <= groups; g++ {
			for _, s := range servers {
				if s != nil && s.Node().IsLeader(ids.GroupID(g)) {
					led++
					break
				}
			}
		}
		if led == groups {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("groups without a leader")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestForwardingAdminSocketAndRestart(t *testing.T) {
	servers, dirs := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	waitLeaders(ctx, t, servers, 3)

	// A key whose group another node leads is forwarded over QUIC.
	var key string
	var via int
	for i := 0; key == ""; i++ {
		k := fmt.Sprintf("k%d", i)
		_, g := servers[0].Route([]byte(k))
		for j, s := range servers {
			if !s.Node().IsLeader(g) {
				key, via = k, j
				break
			}
		}
	}
	admin := NewAdminClient(dirs[via])
	w, err := admin.Put(ctx, key, []byte("v1"))
	if err != nil || w.Version != 1 {
		t.Fatalf("put through a follower node: %+v %v", w, err)
	}
	for _, d := range dirs {
		r, err := NewAdminClient(d).Get(ctx, key)
		if err != nil || !r.Found || r.Value != "v1" || r.Version != 1 {
			t.Fatalf("get through %s: %+v %v", d, r, err)
		}
	}
	if _, err := admin.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if r, err := admin.Get(ctx, key); err != nil || r.Found {
		t.Fatalf("get after delete: %+v %v", r, err)
	}
	// Bad input: a value above the limit is refused and nothing is stored.
	var ae *AdminError
	if _, err := admin.Put(ctx, "big", make([]byte, 2<<20)); !errors.As(err, &ae) || ae.Code != "too_large" {
		t.Fatalf("oversized value: %v", err)
	}
	if r, err := admin.Get(ctx, "big"); err != nil || r.Found {
		t.Fatalf("oversized value stored: %+v %v", r, err)
	}

	// The admin socket is for the dir's owner only.
	for _, d := range dirs {
		fi, err := os.Stat(AdminSocket(d))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("admin socket %s: %v %v", d, fi.Mode(), err)
		}
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm() != 0o700 {
			t.Fatalf("data dir %s: %v", d, st.Mode())
		}
	}
	st, err := admin.Status(ctx)
	if err != nil || st.Node != uint64(via+1) || len(st.Groups) != 3 {
		t.Fatalf("status: %+v %v", st, err)
	}

	// A restart needs only the dir; the identity cannot change.
	if err := servers[2].Stop(); err != nil {
		t.Fatal(err)
	}
	servers[2] = nil
	if _, err := Start(Config{Dir: dirs[2], NodeID: 1}); err == nil || !strings.Contains(err.Error(), "belongs to node 3") {
		t.Fatalf("restart as another node: %v", err)
	}
	s3, err := Start(Config{Dir: dirs[2], TickInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	servers[2] = s3
	if s3.ID() != 3 || s3.Layout().Groups != 3 {
		t.Fatalf("restarted as %d with layout %+v", s3.ID(), s3.Layout())
	}
	waitLeaders(ctx, t, servers, 3)
	// Right after a restart both sides may dial at once, and a request on
	// the connection that loses the tie has an unknown outcome: retry it
	// (the same put twice is harmless here), as a client would.
	for {
		_, err := NewAdminClient(dirs[2]).Put(ctx, "after-restart", []byte("x"))
		if err == nil {
			break
		}
		if !errors.As(err, &ae) || ae.Code != "outcome_unknown" || ctx.Err() != nil {
			t.Fatal(err)
		}
	}
	for g := uint64(1); g <= 3; g++ {
		for {
			var hs []HashAnswer
			for _, d := range dirs {
				if h, err := NewAdminClient(d).Hash(ctx, g); err == nil {
					hs = append(hs, h)
				}
			}
			if len(hs) == 3 && hs[0] == hs[1] && hs[1] == hs[2] {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("group %d did not converge: %+v", g, hs)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
