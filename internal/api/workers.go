package api

import (
	"sync"
	"sync/atomic"
	"time"
)

// workers runs the requests carried by POST /v1/multi on goroutines that
// outlive them. A fresh goroutine per carried request starts on a small
// stack and grows it, copying, on every request (the path through the KV
// service, Raft and Pebble is deep): that copying cost 14% of a node's CPU
// under a read load. Workers keep their grown stacks between requests.
//
// A task goes to an idle worker when there is one and to a new worker
// otherwise, so a task never waits; a worker idle for a whole workerIdle
// period exits.
// stop ends the idle workers and waits for the busy ones to finish.
type workers struct {
	tasks chan func() // unbuffered: a send succeeds only into an idle worker
	stopc chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
	// spawned counts the workers ever started (tests).
	spawned atomic.Int64
	// idle is how long a worker waits for a task before it exits (one to
	// two periods: see work).
	idle time.Duration
}

const workerIdle = 10 * time.Second

func newWorkers() *workers {
	return &workers{tasks: make(chan func()), stopc: make(chan struct{}), idle: workerIdle}
}

// run runs f on a worker.
func (w *workers) run(f func()) {
	select {
	case w.tasks <- f:
		return
	default:
	}
	w.wg.Add(1)
	w.spawned.Add(1)
	go w.work(f)
}

// work runs f, then the tasks handed to it, until a whole idle period
// passes without one (so an idle worker exits after one to two
// periods): the timer is reset once a period, not once a task (a reset per
// task showed in a node's CPU profile under a read load).
func (w *workers) work(f func()) {
	defer w.wg.Done()
	idle := time.NewTimer(w.idle)
	defer idle.Stop()
	worked := false
	for {
		if f != nil {
			f()
			f, worked = nil, true
		}
		select {
		case f = <-w.tasks:
		case <-idle.C:
			if !worked {
				return
			}
			worked = false
			idle.Reset(w.idle)
		case <-w.stopc:
			return
		}
	}
}

// stop ends every worker once its task is done.
func (w *workers) stop() {
	w.once.Do(func() { close(w.stopc) })
	w.wg.Wait()
}
