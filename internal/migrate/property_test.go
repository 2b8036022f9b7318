package migrate

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"pgregory.net/rapid"
)

// ---------------------------------------------------------------- the model

type payloadKind int

const (
	payloadOK           payloadKind = iota
	payloadGarbage                  // does not decode
	payloadBadField                 // decodes, a field is invalid
	payloadNonCanonical             // valid fields, other bytes
	payloadNoLearner                // learner 0: valid only at add_learner and aborting
)

type targetKind int

const (
	targetActive targetKind = iota
	targetGone
	targetDecommissioned
	targetDraining
	targetJoining
	targetUnknown
)

// scenario is one recovery input, in the model's terms.
type scenario struct {
	phase         Phase // PhaseUnknown: the row names no known phase
	from, leader  uint64
	state         rstate
	learnerInRow  bool
	age           time.Duration
	target        targetKind
	crcBad        bool
	fenceBad      bool // the row holds a group other than its move's
	payload       payloadKind
	observed      bool
	leaderKnown   bool
	pending       bool
	toLeads       bool   // in sExtraVoter, the extra voter leads
	down          uint64 // a voter node the leader has not heard from (0: none)
	abortTimeout  time.Duration
	consistentNow bool // state consistent with the phase or one step ahead
}

// modelDecision is the recovery decision table written again, from the
// scenario's labels rather than from rows and views (PITFALLS 13).
func modelDecision(s scenario) (Action, Phase) {
	if s.crcBad || s.phase == PhaseUnknown {
		return Quarantine, PhaseUnknown
	}
	switch s.payload {
	case payloadGarbage, payloadBadField, payloadNonCanonical:
		return Quarantine, s.phase
	case payloadNoLearner:
		if s.phase != PhaseAddLearner && s.phase != PhaseAborting {
			return Quarantine, s.phase
		}
	}
	if s.fenceBad {
		return Quarantine, s.phase
	}
	if s.phase == PhaseComplete {
		return Cleanup, PhaseComplete
	}
	if !s.observed || !s.leaderKnown || s.pending {
		return Wait, s.phase
	}
	if s.state.pastNoReturn() {
		return Forward, PhasePromote
	}
	if s.phase == PhaseAborting || s.target != targetActive || s.age > s.abortTimeout {
		return Abort, PhaseAborting
	}
	return Resume, s.phase
}

// statesFor lists the states consistent with a row at phase, or one step
// ahead of it (a crash between a Raft change and the next checkpoint).
func statesFor(p Phase) []rstate {
	switch p {
	case PhaseAddLearner:
		return []rstate{sNone, sRecorded, sLagging, sCaughtUp}
	case PhaseCatchUp:
		return []rstate{sLagging, sCaughtUp}
	case PhaseTransferLeader:
		return []rstate{sLagging, sCaughtUp, sTransferred}
	case PhasePromote:
		return []rstate{sCaughtUp, sTransferred, sJoint, sFinal}
	case PhaseComplete:
		return []rstate{sRecordedFinal}
	case PhaseAborting:
		return []rstate{sNone, sRecorded, sLagging, sCaughtUp, sTransferred, sExtraVoter, sJoint, sFinal}
	}
	return []rstate{sNone, sRecorded, sLagging, sCaughtUp, sTransferred, sExtraVoter, sJoint, sFinal, sRecordedFinal}
}

func drawScenario(t *rapid.T) scenario {
	var s scenario
	phases := append([]Phase{PhaseUnknown}, Phases...)
	s.phase = rapid.SampledFrom(phases).Draw(t, "phase")
	s.from = rapid.Uint64Range(1, 3).Draw(t, "from")
	s.leader = rapid.SampledFrom([]uint64{0, s.from, other(s.from, 0)}).Draw(t, "leader at start")
	s.consistentNow = rapid.IntRange(0, 3).Draw(t, "loose") > 0
	if s.consistentNow {
		s.state = rapid.SampledFrom(statesFor(s.phase)).Draw(t, "state")
	} else {
		s.state = rstate(rapid.IntRange(0, int(nStates)-1).Draw(t, "any state"))
	}
	s.learnerInRow = s.phase != PhaseAddLearner && (s.phase != PhaseAborting || rapid.Bool().Draw(t, "learner in row"))
	s.age = time.Duration(rapid.IntRange(0, 120).Draw(t, "age minutes")) * time.Minute
	s.abortTimeout = rapid.SampledFrom([]time.Duration{0, time.Hour, 30 * time.Minute}).Draw(t, "abort timeout")
	s.target = targetActive
	if rapid.IntRange(0, 2).Draw(t, "target trouble") == 0 {
		s.target = targetKind(rapid.IntRange(1, int(targetUnknown)).Draw(t, "target"))
	}
	s.crcBad = rapid.IntRange(0, 7).Draw(t, "crc bad") == 0
	s.fenceBad = rapid.IntRange(0, 9).Draw(t, "fence bad") == 0
	s.payload = payloadOK
	if rapid.IntRange(0, 4).Draw(t, "payload trouble") == 0 {
		s.payload = payloadKind(rapid.IntRange(1, int(payloadNoLearner)).Draw(t, "payload"))
	}
	s.observed = rapid.IntRange(0, 9).Draw(t, "unobserved") > 0
	s.leaderKnown = rapid.IntRange(0, 9).Draw(t, "no leader") > 0
	s.pending = rapid.IntRange(0, 9).Draw(t, "pending") == 0
	s.toLeads = s.state == sExtraVoter && rapid.Bool().Draw(t, "extra voter leads")
	s.down = rapid.SampledFrom([]uint64{0, 0, 1, 2, 3}).Draw(t, "down voter")
	return s
}

// build turns a scenario into Recover's inputs.
func (s scenario) build(t *rapid.T) (*metapb.Checkpoint, NodeStates, map[uint64]GroupView, time.Time, *world, ReplicaMove) {
	var learner uint64
	if s.learnerInRow {
		learner = tL
	}
	m := move(s.from, s.leader, learner)
	payload := m.Encode()
	switch s.payload {
	case payloadGarbage:
		payload = append([]byte("x"), rapid.SliceOfN(rapid.Byte(), 0, 64).Draw(t, "garbage")...)
	case payloadBadField:
		bad := m
		bad.Outgoing = 0
		payload = bad.Encode()
	case payloadNonCanonical:
		payload = append([]byte("{ "), payload[1:]...)
	case payloadNoLearner:
		nl := m
		nl.Learner = 0
		payload = nl.Encode()
		m = nl
	}
	phase := s.phase.String()
	if s.phase == PhaseUnknown {
		phase = rapid.SampledFrom([]string{"", "bogus", "Promote", "catch-up"}).Draw(t, "phase name")
	}
	fence := fenceOf(s.phase, m)
	if s.phase == PhaseComplete && rapid.Bool().Draw(t, "complete row still holds its group") {
		fence = m.Group // allowed
	}
	if s.fenceBad {
		fence = rapid.SampledFrom([]uint64{0, tg + 1}).Draw(t, "bad fence")
		if s.phase == PhaseComplete {
			fence = tg + 1
		}
	}
	row := meta.NewFencingCheckpoint("mv", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, phase, 3, payload, fence)
	if s.crcBad {
		row.Crc32C ^= 1 << rapid.IntRange(0, 31).Draw(t, "crc bit")
	}
	ns := activeNodes()
	switch s.target {
	case targetGone:
		ns[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_ACTIVE, Gone: true}
	case targetDecommissioned:
		ns[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_DECOMMISSIONED}
	case targetDraining:
		ns[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_DRAINING}
	case targetJoining:
		ns[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_JOINING}
	case targetUnknown:
		delete(ns, tTo)
	}
	w := worldAt(s.state, s.from, s.leader)
	if s.toLeads {
		w.leader, w.hint = tTo, tTo
	}
	if s.down != 0 && s.down != w.leader {
		w.down[s.down] = true
	}
	if !s.leaderKnown {
		w.leader = 0
	}
	w.pending = s.pending
	groups := map[uint64]GroupView{}
	if s.observed {
		groups[tg] = w.view()
	}
	return row, ns, groups, tStart.Add(s.age), w, m
}

// TestPropertyRecoverMatchesModel: over random (phase, group state
// consistent with the phase or one step ahead, or anything, age, target
// state, checksum, payload, observation) tuples, Recover decides what the
// model decides; and its aborts are safe: never past the point of no return,
// and their compensations, applied in order to the observed group, leave it
// with exactly its original voters, no replica on the target, and its
// original leader and hint.
//
// It is cheap, so it runs ten times rapid's default number of cases: some
// combinations (an extra voter that leads, no leader known at the start)
// are rare.
func TestPropertyRecoverMatchesModel(t *testing.T) {
	for range 10 {
		rapid.Check(t, recoverMatchesModel)
	}
}

func recoverMatchesModel(t *rapid.T) {
	s := drawScenario(t)
	row, ns, groups, now, w, m := s.build(t)
	ds := Recover([]*metapb.Checkpoint{row}, now, ns, groups, Config{AbortTimeout: s.abortTimeout})
	if len(ds) != 1 {
		t.Fatalf("decisions %v", ds)
	}
	d := ds[0]
	if s.abortTimeout == 0 {
		s.abortTimeout = DefaultAbortTimeout
	}
	action, phase := modelDecision(s)
	if d.Action != action || d.Phase != phase {
		t.Fatalf("scenario %+v (state %v): decision %v (%s), model %v from %v", s, s.state, d.Action, d, action, phase)
	}
	if d.Action == Quarantine && d.Err == nil {
		t.Fatal("quarantine without an error")
	}
	if d.Action != Abort {
		return
	}
	if s.state.pastNoReturn() || PastNoReturn(m, w.view()) {
		t.Fatalf("abort past the point of no return: %+v", s)
	}
	checkCompensations(t, s, w, d.Compensations)
	// The executor's path agrees: Next on the aborting row runs the
	// same compensations and ends with Delete.
	driveAbort(t, w.clone(), d.Move)
}

// checkCompensations applies cs in order to a copy of w as the executor
// would (Raft first, then the record) and checks the result.
func checkCompensations(t *rapid.T, s scenario, w *world, cs []Compensation) {
	w = w.clone()
	restorable := s.leader != 0 && !w.down[s.leader]
	for i, c := range cs {
		if c.Group != tg {
			t.Fatalf("compensation %v for another group", c)
		}
		if c.Kind == RestoreLeaderHint && i != 0 {
			t.Fatalf("leader restored after a removal: %v", cs)
		}
		applyCompensation(t, w, c, restorable)
		if !CompensationDone(c, w.view()) {
			t.Fatalf("compensation %v not done once applied: %+v", c, w)
		}
	}
	v := w.view()
	for _, c := range cs {
		if !CompensationDone(c, v) {
			t.Fatalf("compensation %v undone by a later one", c)
		}
	}
	checkAborted(t, w, s.leader, restorable)
}

// applyCompensation executes c on w.
func applyCompensation(t *rapid.T, w *world, c Compensation, restorable bool) {
	switch c.Kind {
	case RestoreLeaderHint:
		if _, ok := w.voters[c.Replica]; ok && w.voters[c.Replica] == c.Node && !w.down[c.Node] {
			w.leader, w.hint = c.Node, c.Node
		}
	case RemoveVoter, RemoveLearner:
		if w.leader == c.Node && w.leader != 0 {
			if restorable {
				t.Fatalf("compensation %v removes the leader", c)
			}
			w.leader = 0
		}
		for _, l := range []map[uint64]uint64{w.voters, w.outgoing, w.learners, w.recVoters, w.recLearners} {
			for r, n := range l {
				if r == c.Replica || n == c.Node {
					delete(l, r)
				}
			}
		}
		if w.hint == c.Node {
			w.hint = 0
		}
	default:
		t.Fatalf("unknown compensation %v", c)
	}
}

// checkAborted checks that w is the group before the move: voters 1, 2, 3,
// nothing on the target, the leader at start restored when it can lead.
func checkAborted(t *rapid.T, w *world, leaderAtStart uint64, restorable bool) {
	orig := map[uint64]uint64{1: 1, 2: 2, 3: 3}
	if !maps.Equal(w.voters, orig) || !maps.Equal(w.recVoters, orig) || len(w.outgoing) != 0 || len(w.learners) != 0 || len(w.recLearners) != 0 {
		t.Fatalf("after the abort: voters %v (recorded %v), outgoing %v, learners %v (recorded %v)", w.voters, w.recVoters, w.outgoing, w.learners, w.recLearners)
	}
	if restorable && (w.leader != leaderAtStart || w.hint != leaderAtStart) {
		t.Fatalf("after the abort: leader %d, hint %d, want %d", w.leader, w.hint, leaderAtStart)
	}
}

// driveAbort runs Next on an aborting row over w until it deletes the row.
func driveAbort(t *rapid.T, w *world, m ReplicaMove) {
	w.pending = false
	if w.leader == 0 {
		w.leader = other(m.From, 0)
		if w.down[w.leader] {
			w.leader = other(m.From, w.leader)
		}
	}
	restorable := m.LeaderAtStart != 0 && !w.down[m.LeaderAtStart]
	for range 10 {
		s := Next(m, PhaseAborting, w.view())
		switch s.Kind {
		case StepDelete:
			checkAborted(t, w, m.LeaderAtStart, restorable)
			return
		case StepCompensate:
			applyCompensation(t, w, s.Compensation, true)
		case StepTransferLeader:
			if s.Node == m.To || w.voters[s.Replica] != s.Node {
				t.Fatalf("transfer to %v", s)
			}
			w.leader = s.Node
		default:
			t.Fatalf("aborting: step %v over %+v", s, w)
		}
	}
	t.Fatalf("abort did not end: %+v", w)
}

// ---------------------------------------------------------------- whole moves

// row is the move's checkpoint row in the simulated metadata.
type simRow struct {
	present bool
	phase   Phase
	attempt uint32
	m       ReplicaMove
}

// sim is a group under a move with a failure-prone environment.
type sim struct {
	t        *rapid.T
	w        *world
	row      simRow
	ns       NodeStates
	now      time.Time
	cfg      Config
	downFor  int    // iterations the target has been down
	pendingF func() // the configuration change in flight
	log      []string
	// meta is a metadata state holding the row, to which every row write
	// and deletion is applied with meta.Apply: each must be accepted (its
	// expectation is the row it was decided from), and the stored row
	// must be the simulated one.
	meta *metapb.State
}

// metaWrite applies the row's entry e (a put, a delete, or a Batch whose
// last member is the put) to s.meta; it must be accepted.
func (s *sim) metaWrite(e *metapb.Entry) {
	if b := e.GetBatch(); b != nil {
		es := b.GetEntries()
		for _, m := range es[:len(es)-1] {
			if id := m.GetPromoteReplica().GetMigrationId() + m.GetRemoveReplica().GetMigrationId(); id != "mv" {
				s.fatalf("record member %v is not the move's", m)
			}
		}
		e = es[len(es)-1]
	}
	if e.GetPutCheckpoint() == nil && e.GetDeleteCheckpoint() == nil {
		s.fatalf("not a row write: %v", e)
	}
	next, _, _, err := meta.Apply(s.meta, e, s.now.UnixNano())
	if err != nil {
		s.fatalf("row write %v refused: %v", e, err)
	}
	s.meta = next
}

// checkMetaRow checks that the metadata row is the simulated one.
func (s *sim) checkMetaRow() {
	c, ok := s.meta.GetMigrations()["mv"]
	if ok != s.row.present {
		s.fatalf("metadata row present %v, simulated %v", ok, s.row.present)
	}
	if !ok {
		return
	}
	p, m, err := ParseRow(c)
	if err != nil || p != s.row.phase || m != s.row.m || c.GetAttempt() != s.row.attempt {
		s.fatalf("metadata row %v (%v), simulated %v %+v", c, err, s.row.phase, s.row.m)
	}
	if _, held := meta.GroupFence(s.meta, tg); held != (p != PhaseComplete) {
		s.fatalf("row at %v holds the group: %v", p, held)
	}
}

func (s *sim) fatalf(format string, args ...any) {
	s.t.Fatalf("%s\nlog:\n%s", fmt.Sprintf(format, args...), strings.Join(s.log, "\n"))
}

// confChange applies f now or leaves it pending (proposed, not applied).
func (s *sim) confChange(f func()) {
	if s.pendingF == nil && rapid.IntRange(0, 2).Draw(s.t, "conf change in flight") == 0 {
		s.pendingF, s.w.pending = f, true
		return
	}
	f()
}

func (s *sim) voterNodesUp() []uint64 {
	var out []uint64
	for _, m := range sortedMembers(s.w.voters) {
		if !s.w.down[m.Node] {
			out = append(out, m.Node)
		}
	}
	return out
}

// env moves the world on between two passes of the executor.
func (s *sim) env() {
	t, w := s.t, s.w
	s.now = s.now.Add(time.Duration(rapid.IntRange(0, 5).Draw(t, "minutes")) * time.Minute)
	if s.pendingF != nil && rapid.Bool().Draw(t, "apply pending") {
		s.pendingF()
		s.pendingF, w.pending = nil, false
	}
	if w.Joint() && s.pendingF == nil && rapid.Bool().Draw(t, "leave joint") {
		w.outgoing = map[uint64]uint64{}
		if replicaOf(w, w.leader) == 0 {
			// The outgoing node was elected while the replace was in
			// flight (Next never proposes it while that node leads): it
			// steps down once removed (StepDownOnRemoval).
			w.leader = 0
		}
	}
	// The target fails and returns; it is declared gone after a while.
	if w.down[tTo] {
		s.downFor++
		if rapid.IntRange(0, 5).Draw(t, "target returns") == 0 {
			w.down[tTo], s.downFor = false, 0
		}
	} else if rapid.IntRange(0, 60).Draw(t, "target fails") == 0 {
		w.down[tTo] = true
		if w.leader == tTo {
			w.leader = 0
		}
	}
	s.ns[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_ACTIVE, Gone: s.downFor >= 5}
	// Elections.
	if up := s.voterNodesUp(); len(up) > 0 && !w.Joint() {
		if w.leader == 0 || rapid.IntRange(0, 24).Draw(t, "election") == 0 {
			w.leader = rapid.SampledFrom(up).Draw(t, "new leader")
		}
	}
	if rapid.IntRange(0, 30).Draw(t, "leader unknown") == 0 {
		w.leader = 0
	}
	if w.leader != 0 && rapid.Bool().Draw(t, "control loop records the hint") {
		w.hint = w.leader
	}
	// Writes; the voters keep up, the target's replica catches up.
	w.commit += uint64(rapid.IntRange(0, 100).Draw(t, "writes"))
	for r, n := range s.allRaft() {
		switch {
		case w.down[n]:
			w.replicating[r] = false
		case n != tTo:
			w.match[r], w.replicating[r] = w.commit, true
		default:
			w.match[r] = min(w.commit, w.match[r]+uint64(rapid.IntRange(0, 3000).Draw(t, "learner progress")))
			w.replicating[r] = true
		}
	}
}

func replicaOf(w *world, node uint64) uint64 {
	for r, n := range w.voters {
		if n == node {
			return r
		}
	}
	return 0
}

func (s *sim) allRaft() map[uint64]uint64 {
	out := maps.Clone(s.w.voters)
	maps.Copy(out, s.w.outgoing)
	maps.Copy(out, s.w.learners)
	return out
}

// exec executes one step as the executor would, sometimes only in part (a
// crash between its Raft part and its metadata part).
func (s *sim) exec(st Step) {
	t, w, r := s.t, s.w, &s.row
	crash := func() bool { return rapid.IntRange(0, 3).Draw(t, "crash mid-step") == 0 }
	switch st.Kind {
	case StepWait:
	case StepAdvance:
		if r.phase == PhaseAborting && st.Phase != PhasePromote || r.phase != PhaseAborting && st.Phase <= r.phase {
			s.fatalf("advance from %v to %v", r.phase, st.Phase)
		}
		s.metaWrite(st.Entry("mv", r.attempt))
		r.phase, r.m = st.Phase, st.Move
	case StepAddLearner:
		id := st.Replica
		if id == 0 {
			if w.view().replicaOn(tTo) != 0 {
				s.fatalf("a second replica on the target")
			}
			if e := st.Entry("mv", r.attempt); e.GetAddReplica().GetMigrationId() != "mv" {
				s.fatalf("add replica %v is not the move's", e)
			}
			id = w.next
			w.next++
			w.recLearners[id] = tTo
			if crash() {
				return
			}
		}
		if w.nodeOf(id) != 0 || w.recLearners[id] != tTo {
			s.fatalf("add learner %d: raft has it, or the record does not", id)
		}
		s.confChange(func() { w.learners[id] = tTo; w.match[id], w.replicating[id] = 0, false })
	case StepTransferLeader:
		if w.voters[st.Replica] != st.Node || st.Node == tTo || r.phase != PhaseAborting && st.Node == r.m.From {
			s.fatalf("transfer to %v in %v", st, r.phase)
		}
		if !w.down[st.Node] {
			w.leader = st.Node
		}
	case StepReplace:
		l := st.Replica
		if w.leader == r.m.From || w.nodeOf(st.Remove) == w.leader && st.Remove != 0 {
			s.fatalf("replace removes the leader (node %d)", w.leader)
		}
		if st.Promote && (!w.replicating[l] || w.match[l]+DefaultCatchUpMaxLag < w.commit) {
			s.fatalf("promoting learner %d at match %d, commit %d, replicating %v", l, w.match[l], w.commit, w.replicating[l])
		}
		s.confChange(func() {
			old := maps.Clone(w.voters)
			if st.Promote {
				delete(w.learners, l)
				w.voters[l] = tTo
			}
			if st.Remove != 0 {
				delete(w.voters, st.Remove)
				delete(w.learners, st.Remove)
			}
			if st.Promote && st.Remove != 0 {
				w.outgoing = old
			}
		})
	case StepRecord:
		if w.Joint() {
			s.fatalf("record while joint")
		}
		delete(w.recLearners, st.Replica)
		w.recVoters[st.Replica] = tTo
		if n, ok := w.recVoters[st.Remove]; ok {
			delete(w.recVoters, st.Remove)
			if w.hint == n {
				w.hint = 0
			}
		}
		s.metaWrite(st.Entry("mv", r.attempt))
		r.phase, r.m = PhaseComplete, st.Move
	case StepAbort:
		s.metaWrite(st.Entry("mv", r.attempt))
		r.phase, r.m = PhaseAborting, st.Move.WithError(st.Reason)
	case StepCompensate:
		c := st.Compensation
		switch c.Kind {
		case RestoreLeaderHint:
			if w.voters[c.Replica] == c.Node && !w.down[c.Node] {
				w.leader = c.Node
			}
			if crash() {
				return
			}
			w.hint = c.Node
		default:
			if c.Node == w.leader {
				s.fatalf("compensation %v removes the leader", c)
			}
			if e := st.Entry("mv", r.attempt); c.Replica != 0 && e.GetRemoveReplica().GetMigrationId() != "mv" {
				s.fatalf("compensation entry %v is not the move's", e)
			}
			if w.nodeOf(c.Replica) != 0 {
				s.confChange(func() {
					delete(w.voters, c.Replica)
					delete(w.learners, c.Replica)
				})
				if w.pending || crash() {
					return
				}
			}
			delete(w.recVoters, c.Replica)
			delete(w.recLearners, c.Replica)
			if w.hint == c.Node {
				w.hint = 0
			}
		}
	case StepDelete:
		s.metaWrite(st.Entry("mv", r.attempt))
		r.present = false
	default:
		s.fatalf("step %v", st)
	}
}

// TestPropertyMovesEndCleanly drives whole moves with the executor's loop
// (Recover, then Next, then the step) through failures: crashes between a
// step's Raft and metadata parts, configuration changes left in flight,
// elections, a leader unknown, the target failing (and being declared
// gone) or returning, time passing the abort timeout. Every move ends: the
// row is deleted, and the group has either the new voters (from replaced by
// the target) or exactly the old ones, no learner, Raft and the record in
// agreement. On the way, no step removes the leader or promotes a learner
// that is behind (PITFALLS 10, 12).
func TestPropertyMovesEndCleanly(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		from := rapid.Uint64Range(1, 3).Draw(t, "from")
		leader := rapid.Uint64Range(1, 3).Draw(t, "leader")
		w := newWorld(leader)
		if from != leader && rapid.IntRange(0, 3).Draw(t, "from is dead") == 0 {
			w.down[from] = true // moving a replica off a dead node
			w.replicating[from] = false
		}
		s := &sim{
			t: t, w: w, ns: activeNodes(), now: tStart,
			cfg: Config{AbortTimeout: rapid.SampledFrom([]time.Duration{20 * time.Minute, time.Hour, 100 * time.Hour}).Draw(t, "abort timeout")},
			row: simRow{present: true, phase: PhaseAddLearner, attempt: 1, m: move(from, leader, 0)},
		}
		st, _, _, err := meta.Apply(nil, meta.NewBootstrap(&metapb.ClusterSettings{ClusterId: "c", VshardCount: 16, ReplicationFactor: 3}, &metapb.Node{PeerAddr: "n1:1"}, uint32(tg)), tStart.UnixNano())
		if err != nil {
			t.Fatal(err)
		}
		s.meta = st
		s.metaWrite(meta.NewPutCheckpointIf(Checkpoint("mv", PhaseAddLearner, 1, s.row.m), meta.ExpectAbsent()))
		for i := 0; i < 1000 && s.row.present; i++ {
			s.env()
			row := Checkpoint("mv", s.row.phase, s.row.attempt, s.row.m)
			ds := Recover([]*metapb.Checkpoint{row}, s.now, s.ns, map[uint64]GroupView{tg: w.view()}, s.cfg)
			if len(ds) != 1 {
				s.fatalf("decisions %v", ds)
			}
			d := ds[0]
			s.log = append(s.log, fmt.Sprintf("%3d %-15s %-8v %s", i, s.row.phase, d.Action, d.Reason))
			switch d.Action {
			case Quarantine:
				s.fatalf("quarantined: %v", d.Err)
			case Wait:
				continue
			case Cleanup:
				s.metaWrite(d.Entry())
				s.row.present = false
				continue
			case Abort:
				if s.row.phase != PhaseAborting {
					s.metaWrite(d.Entry())
					s.row.phase, s.row.m = PhaseAborting, d.Move.WithError(d.Reason)
				}
			}
			st := s.cfg.Next(s.row.m, s.row.phase, w.view())
			if again := s.cfg.Next(s.row.m, s.row.phase, w.view()); again.String() != st.String() {
				s.fatalf("Next is not a function of its inputs: %v then %v", st, again)
			}
			s.log = append(s.log, "    "+st.String())
			s.exec(st)
			s.checkMetaRow()
		}
		s.checkMetaRow()
		if s.row.present {
			s.fatalf("the move did not end: row at %v, world %+v", s.row.phase, w)
		}
		if w.pending {
			s.pendingF()
			w.pending = false
		}
		orig := map[uint64]uint64{1: 1, 2: 2, 3: 3}
		if maps.Equal(w.voters, orig) {
			checkAborted(t, w, leader, false)
			return
		}
		want := maps.Clone(orig)
		delete(want, from)
		for r, n := range w.voters {
			if n == tTo {
				want[r] = tTo
			}
		}
		if !maps.Equal(w.voters, want) || len(w.voters) != 3 || !maps.Equal(w.recVoters, w.voters) || len(w.learners)+len(w.recLearners)+len(w.outgoing) != 0 {
			s.fatalf("after the move: voters %v (recorded %v), outgoing %v, learners %v (recorded %v)", w.voters, w.recVoters, w.outgoing, w.learners, w.recLearners)
		}
	})
}
