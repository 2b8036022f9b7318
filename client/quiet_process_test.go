package client

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metricSum returns the sum of a counter's samples on the node whose client
// API is at api, or -1 when the node does not answer.
func metricSum(api, name string) float64 {
	resp, err := http.Get("http://" + api + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue // another metric whose name starts the same
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// TestQuietGroupsFailOverAfterSIGKILL runs three node processes over real
// QUIC with mutual TLS, lets every group go quiet (quiescence: no Raft
// message at all for a while), then SIGKILLs the node leading the most
// groups. The quiet followers stopped their Raft clocks, so only the
// silence of the dead node (no pings) can wake them: every group must
// elect a leader again, every acknowledged write must read back, and new
// writes must succeed, within seconds.
func TestQuietGroupsFailOverAfterSIGKILL(t *testing.T) {
	ctx, pc := startProcCluster(t)
	cl := pc.client
	keys := make([]string, 32)
	for i := range keys {
		keys[i] = fmt.Sprintf("quiet-%d", i)
		if _, err := cl.Put(ctx, []byte(keys[i]), []byte("before")); err != nil {
			t.Fatalf("put %s: %v", keys[i], err)
		}
	}

	// Quiet: no Raft message sent by any node for 500ms (25 ticks; a
	// group that heartbeats sends one every other tick).
	sent := func() float64 {
		total := 0.0
		for _, p := range pc.procs {
			total += metricSum(p.api, "nodedb_raft_messages_sent_total")
		}
		return total
	}
	for last := sent(); ; {
		select {
		case <-ctx.Done():
			t.Fatal("the groups never went quiet")
		case <-time.After(500 * time.Millisecond):
		}
		now := sent()
		if now == last {
			break
		}
		last = now
	}
	victim, most := pc.mostLeader(ctx)
	if q := metricSum(pc.procs[victim].api, "nodedb_raft_quiesces_total"); q <= 0 {
		t.Fatalf("node %d reports %v quiesced replicas while its groups sent nothing", victim+1, q)
	}

	pc.procs[victim].kill()
	killed := time.Now()
	for _, k := range keys {
		v, err := cl.Get(ctx, []byte(k))
		if err != nil || string(v.Value) != "before" {
			t.Fatalf("read %s after the kill: %q, %v", k, v.Value, err)
		}
		if _, err := cl.Put(ctx, []byte(k), []byte("after")); err != nil {
			t.Fatalf("put %s after the kill: %v", k, err)
		}
	}
	took := time.Since(killed)
	t.Logf("node %d (leader of %d groups) killed while quiet: every key read and written again after %v", victim+1, most, took.Round(time.Millisecond))
	// Elections take 200-400ms at these ticks, noticing the silence up to
	// 300ms more; the client's retries add their backoff.
	if took > 10*time.Second {
		t.Errorf("the quiet groups took %v to serve again after their leader's node was killed", took)
	}

	pc.procs[victim].args = []string{"start", "--dir", pc.procs[victim].dir, "--tick", "20ms", "--log-level", "info"}
	pc.procs[victim].start(t, pc.bin)
	for _, k := range keys {
		v, err := cl.Get(ctx, []byte(k))
		if err != nil || string(v.Value) != "after" {
			t.Fatalf("read %s after the restart: %q, %v", k, v.Value, err)
		}
	}
}
