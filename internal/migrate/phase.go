package migrate

import "fmt"

// Phase is where a replica move stands, as its checkpoint row names it.
// The names are stored in rows and shown by `migrations`: never rename one.
type Phase uint8

const (
	// PhaseUnknown is no phase (a row whose phase string is not one below).
	PhaseUnknown Phase = iota
	// PhaseAddLearner: the move is recorded; a learner on the target is to
	// be added (metadata AddReplica first, then the Raft change).
	PhaseAddLearner
	// PhaseCatchUp: the learner exists; wait until the leader's progress
	// shows its match index within Config.CatchUpMaxLag of the commit index.
	PhaseCatchUp
	// PhaseTransferLeader: the learner caught up; if the outgoing voter
	// leads, hand leadership to a voter that stays, so that the promote
	// never removes the leader (a removed leader steps down only after the
	// joint configuration is left, and the group is leaderless until the
	// next election).
	PhaseTransferLeader
	// PhasePromote: one joint-consensus change promotes the learner and
	// removes the outgoing voter. Once Raft has applied it, the move is past
	// the point of no return; the metadata record of the new membership and
	// the complete row are then written in one Batch.
	PhasePromote
	// PhaseComplete: membership changed in Raft and in the metadata; the row
	// only waits to be deleted. The outgoing node's control loop destroys
	// its replica because the metadata no longer places one there.
	PhaseComplete
	// PhaseAborting: the move is being undone (before the point of no
	// return): compensations run until all have taken effect, then the row
	// is deleted.
	PhaseAborting
)

var phaseNames = [...]string{
	PhaseUnknown:        "",
	PhaseAddLearner:     "add_learner",
	PhaseCatchUp:        "catch_up",
	PhaseTransferLeader: "transfer_leader",
	PhasePromote:        "promote",
	PhaseComplete:       "complete",
	PhaseAborting:       "aborting",
}

// Phases lists every valid phase, forward ones in order, then aborting.
var Phases = []Phase{PhaseAddLearner, PhaseCatchUp, PhaseTransferLeader, PhasePromote, PhaseComplete, PhaseAborting}

// String is the phase's stable name ("catch_up").
func (p Phase) String() string {
	if int(p) < len(phaseNames) && p != PhaseUnknown {
		return phaseNames[p]
	}
	return fmt.Sprintf("Phase(%d)", int(p))
}

// Valid reports whether p is one of Phases.
func (p Phase) Valid() bool { return p > PhaseUnknown && int(p) < len(phaseNames) }

// ParsePhase returns the phase named s, or PhaseUnknown and false.
func ParsePhase(s string) (Phase, bool) {
	for _, p := range Phases {
		if phaseNames[p] == s {
			return p, true
		}
	}
	return PhaseUnknown, false
}
