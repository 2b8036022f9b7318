package api

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWorkersReuseAndStop: tasks never wait for a worker, idle workers are
// reused, and stop ends them all (goleak checks in TestMain).
func TestWorkersReuseAndStop(t *testing.T) {
	w := newWorkers()
	var ran atomic.Int64
	// 32 tasks that block together need 32 workers at once.
	var started, release sync.WaitGroup
	started.Add(32)
	release.Add(1)
	for range 32 {
		w.run(func() {
			started.Done()
			release.Wait()
			ran.Add(1)
		})
	}
	started.Wait() // would hang if a task waited for a busy worker
	release.Done()
	// Sequential tasks afterwards find idle workers (a worker goes back
	// to waiting just after its task: give it a moment, and allow a few
	// new workers for that race anyway).
	for range 100 {
		time.Sleep(time.Millisecond)
		done := make(chan struct{})
		w.run(func() { ran.Add(1); close(done) })
		<-done
	}
	if n := w.spawned.Load(); n < 32 || n > 32+10 {
		t.Errorf("%d workers started for 32 concurrent then 100 sequential tasks", n)
	}
	w.stop()
	w.stop() // idempotent
	if ran.Load() != 132 {
		t.Fatalf("%d tasks ran, want 132", ran.Load())
	}
}

// TestIdleWorkersExit: a worker with no task for a whole idle period exits
// within two periods; one that keeps getting tasks stays.
func TestIdleWorkersExit(t *testing.T) {
	w := newWorkers()
	w.idle = 100 * time.Millisecond
	defer w.stop()
	done := make(chan struct{})
	w.run(func() { close(done) })
	<-done
	// Tasks every 30ms for 600ms: the same worker runs them all.
	for range 20 {
		time.Sleep(30 * time.Millisecond)
		done := make(chan struct{})
		w.run(func() { close(done) })
		<-done
	}
	// One worker; a couple more if the machine was slow to park it before
	// the next task. Workers that exited every period would make six.
	if n := w.spawned.Load(); n > 3 {
		t.Fatalf("%d workers started for tasks 30ms apart over 600ms with a 100ms idle period", n)
	}
	exited := make(chan struct{})
	go func() { w.wg.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(time.Second):
		t.Fatal("an idle worker did not exit within ten idle periods")
	}
}
