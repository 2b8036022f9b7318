package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/client"
	"github.com/lni/dragonboat/v3/config"
	"github.com/lni/dragonboat/v3/logger"
	"github.com/lni/dragonboat/v3/raftio"
	sm "github.com/lni/dragonboat/v3/statemachine"
)

// dragonboatLoggers are the loggers dragonboat v3.3.8 creates. They log
// every cluster start at INFO and every election at WARNING, and the
// transport logs each connection it closes at ERROR, so the transport is set
// to CRITICAL and the others to ERROR.
var dragonboatLoggers = []string{"config", "dragonboat", "logdb", "LogDB", "pebblekv", "raft", "raftpb", "rsm", "server", "settings", "transport"}

var quietDragonboat sync.Once

// dbCluster is dragonboat's side: 3 NodeHosts in this process, each a
// member of every Raft cluster (dragonboat's word for a group).
type dbCluster struct {
	termsSeen *termListener
	nhs       []*dragonboat.NodeHost
	sessions  [][]*client.Session // [nodehost][group]: no-op sessions
	leader    []atomic.Int32      // per group: index of the NodeHost leading it
}

// termListener keeps the highest term each cluster announced a leader in,
// from the NodeHosts' leadership events.
type termListener struct {
	mu  sync.Mutex
	max map[uint64]uint64
}

func (l *termListener) LeaderUpdated(info raftio.LeaderInfo) {
	l.mu.Lock()
	l.max[info.ClusterID] = max(l.max[info.ClusterID], info.Term)
	l.mu.Unlock()
}

func (l *termListener) sum() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var s uint64
	for _, t := range l.max {
		s += t
	}
	return s
}

// dbSM is an in-memory key-value map: the usual IStateMachine.
type dbSM struct {
	m map[string][]byte
}

func (s *dbSM) Update(data []byte) (sm.Result, error) {
	k, v, ok := decodeCmd(data)
	if !ok {
		return sm.Result{}, nil
	}
	s.m[string(k)] = append([]byte(nil), v...)
	return sm.Result{Value: uint64(len(v))}, nil
}

func (s *dbSM) Lookup(q interface{}) (interface{}, error) {
	k, _ := q.([]byte)
	return s.m[string(k)], nil
}

// SaveSnapshot writes the map as (key length, key, value length, value)
// records.
func (s *dbSM) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	var b []byte
	for k, v := range s.m {
		b = appendLenBytes(appendLenBytes(b[:0], []byte(k)), v)
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

func (s *dbSM) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := map[string][]byte{}
	for len(b) > 0 {
		var k, v []byte
		if k, b, err = readLenBytes(b); err != nil {
			return err
		}
		if v, b, err = readLenBytes(b); err != nil {
			return err
		}
		m[string(k)] = v
	}
	s.m = m
	return nil
}

func (s *dbSM) Close() error { return nil }

func appendLenBytes(b, v []byte) []byte {
	b = append(b, byte(len(v)>>24), byte(len(v)>>16), byte(len(v)>>8), byte(len(v)))
	return append(b, v...)
}

func readLenBytes(b []byte) (v, rest []byte, err error) {
	if len(b) < 4 {
		return nil, nil, errors.New("snapshot: short record")
	}
	n := int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3])
	if len(b) < 4+n {
		return nil, nil, errors.New("snapshot: short record")
	}
	return append([]byte(nil), b[4:4+n]...), b[4+n:], nil
}

func startDragonboat(ctx context.Context, o groupOptions) (_ groupSystem, err error) {
	quietDragonboat.Do(func() {
		for _, n := range dragonboatLoggers {
			lvl := logger.ERROR
			if n == "transport" {
				lvl = logger.CRITICAL
			}
			logger.GetLogger(n).SetLevel(lvl)
		}
	})
	const nodes = 3
	c := &dbCluster{leader: make([]atomic.Int32, o.groups), termsSeen: &termListener{max: map[uint64]uint64{}}}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	members := map[uint64]dragonboat.Target{}
	for i := range nodes {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		members[uint64(i+1)] = addr
	}
	rtt := uint64(max(1, o.tick.Milliseconds()))
	for i := range nodes {
		dir := filepath.Join(o.dir, fmt.Sprintf("nh%d", i+1))
		nhc := config.NodeHostConfig{
			NodeHostDir:    dir,
			WALDir:         filepath.Join(dir, "wal"),
			RTTMillisecond: rtt,
			RaftAddress:    members[uint64(i+1)],
			// Called on one goroutine per NodeHost, off the Raft path.
			RaftEventListener: c.termsSeen,
		}
		if o.dragonboatShards > 0 {
			nhc.Expert.Engine = config.GetDefaultEngineConfig()
			nhc.Expert.Engine.ExecShards = o.dragonboatShards
			nhc.Expert.LogDB = config.GetDefaultLogDBConfig()
			nhc.Expert.LogDB.Shards = o.dragonboatShards
		}
		if o.certs != nil {
			nhc.MutualTLS = true
			nhc.CAFile, nhc.CertFile, nhc.KeyFile = o.certs.CA, o.certs.Cert, o.certs.Key
		}
		nh, err := dragonboat.NewNodeHost(nhc)
		if err != nil {
			return nil, fmt.Errorf("NodeHost %d: %w", i+1, err)
		}
		c.nhs = append(c.nhs, nh)
	}
	for g := range o.groups {
		for i, nh := range c.nhs {
			rc := config.Config{
				NodeID:          uint64(i + 1),
				ClusterID:       uint64(g + 1),
				CheckQuorum:     true,
				ElectionRTT:     mgElectionTicks,
				HeartbeatRTT:    mgHeartbeatTicks,
				SnapshotEntries: o.snapshotEntries,
			}
			if o.snapshotEntries > 0 {
				rc.CompactionOverhead = o.snapshotEntries / 2
			}
			create := func(uint64, uint64) sm.IStateMachine { return &dbSM{m: map[string][]byte{}} }
			if err := nh.StartCluster(members, false, create, rc); err != nil {
				return nil, fmt.Errorf("NodeHost %d: start cluster %d: %w", i+1, g+1, err)
			}
		}
	}
	c.sessions = make([][]*client.Session, nodes)
	for i, nh := range c.nhs {
		for g := range o.groups {
			c.sessions[i] = append(c.sessions[i], nh.GetNoOPSession(uint64(g+1)))
		}
	}
	if err := c.spreadLeaders(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// leaderOf returns the index of the NodeHost that leads group g, as the
// first NodeHost that knows a leader sees it, or -1.
func (c *dbCluster) leaderOf(g int) int {
	for _, nh := range c.nhs {
		id, ok, err := nh.GetLeaderID(uint64(g + 1))
		if err == nil && ok && id >= 1 && int(id) <= len(c.nhs) {
			return int(id) - 1
		}
	}
	return -1
}

// agreedLeader returns the index of the NodeHost that leads group g if
// every NodeHost sees it so, or -1.
func (c *dbCluster) agreedLeader(g int) int {
	l := -1
	for _, nh := range c.nhs {
		id, ok, err := nh.GetLeaderID(uint64(g + 1))
		if err != nil || !ok || id < 1 || int(id) > len(c.nhs) || (l >= 0 && int(id)-1 != l) {
			return -1
		}
		l = int(id) - 1
	}
	return l
}

// spreadLeaders waits for a leader in every group and moves leaderships so
// that group g is led by NodeHost g mod 3.
func (c *dbCluster) spreadLeaders(ctx context.Context) error {
	deadline := time.Now().Add(2 * time.Minute)
	moved := time.Time{}
	for {
		done := true
		for g := range c.leader {
			l := c.agreedLeader(g)
			want := spreadTarget(g, len(c.nhs))
			switch {
			case l < 0:
				done = false
			case l != want:
				done = false
				if time.Since(moved) > time.Second {
					_ = c.nhs[l].RequestLeaderTransfer(uint64(g+1), uint64(want+1))
				}
			}
			if l >= 0 {
				c.leader[g].Store(int32(l))
			}
		}
		if done {
			return nil
		}
		if time.Since(moved) > time.Second {
			moved = time.Now()
		}
		if time.Now().After(deadline) {
			// Go on with the leaders there are, as long as every group has one.
			for g := range c.leader {
				if c.leaderOf(g) < 0 {
					return fmt.Errorf("dragonboat: cluster %d has no leader", g+1)
				}
			}
			logf("dragonboat: leaderships not spread after 2 minutes, going on: %v", c.leaders())
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *dbCluster) name() string { return "dragonboat" }

func (c *dbCluster) propose(ctx context.Context, g int, cmd []byte) error {
	l := c.leader[g].Load()
	_, err := c.nhs[l].SyncPropose(ctx, c.sessions[l][g], cmd)
	if err != nil {
		// Leadership may have moved: look again for the next proposal.
		if nl := c.leaderOf(g); nl >= 0 {
			c.leader[g].Store(int32(nl))
		}
	}
	return err
}

func (c *dbCluster) leaders() []int {
	out := make([]int, len(c.nhs))
	for g := range c.leader {
		if l := c.leaderOf(g); l >= 0 {
			out[l]++
		}
	}
	return out
}

func (c *dbCluster) terms() uint64 { return c.termsSeen.sum() }

func (c *dbCluster) close() error {
	var wg sync.WaitGroup
	for _, nh := range c.nhs {
		wg.Go(nh.Stop)
	}
	wg.Wait()
	c.nhs = nil
	return nil
}
