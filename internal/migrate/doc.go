// Package migrate is the pure core of crash-safe replica moves: the
// checkpoint payload, the phases, the step decision and the recovery
// decision. Like package placement it does no I/O: every function is a pure
// function of plain data (a checkpoint row, the metadata state, what the
// executor observed from Raft) returning plain data, so any node computes
// the same answer and the tests need no cluster.
//
// A replica move takes group G's voter on node From to node To:
//
//	add_learner → catch_up → transfer_leader → promote → complete
//
// with a checkpoint row (meta.NewPutCheckpoint) written at every phase
// boundary. The executor (not in this package) runs a loop: observe the
// group (GroupView), ask Next what to do, do it (a metadata entry, a Raft
// configuration change or a leadership transfer), repeat. Next reads the
// observed state, not only the row, so a crash between a Raft change and
// the checkpoint that records it is resumed by advancing the checkpoint,
// never by redoing the change.
//
// The point of no return is the joint-consensus configuration change that
// promotes the learner and removes the outgoing voter: once Raft has
// applied it (observed as the learner being an incoming voter while the
// outgoing replica is not), there is no way back in Raft (a joint
// configuration can only be left forward, and the removed replica's ID is
// never reused), so the move only goes forward. Before it, a move can be
// aborted: the row goes to phase aborting and Compensations undoes it with
// real Raft configuration changes and metadata entries.
//
// The metadata group guards the move at the single source of truth. Every
// row but the complete one holds the move's group (Checkpoint.fence_group),
// so membership changes of the group that do not carry the move's ID
// (placement, repair) are refused with CODE_CONFLICT until the row releases
// the group or is deleted; the move's own entries (Step.Entry, its
// compensations) carry the ID. Every row write and deletion is conditional
// on the row the decision was made from (Step.From, Decision.From and the
// attempt): of two coordinators working from the same read, only the first
// write lands, and none moves a row backwards (CODE_CHECKPOINT_CONFLICT).
// A failure within a phase is recorded in place (Step.ErrorEntry).
//
// Recover decides, when a node becomes metadata leader, what to do with
// every row: clean it up, resume it, take it forward, abort it, wait for a
// usable observation of its group, or quarantine it (bad checksum or
// payload). docs/architecture.md ("Migrations") has the decision table.
package migrate
