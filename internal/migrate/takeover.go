package migrate

import (
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// TakeoverEntry is the write by which a coordinator that has just become
// metadata leader takes over a row it inherited from an earlier leader: the
// row again, one attempt later, written only if it is still at From and
// Attempt. Once it lands, every write the earlier coordinator decided from
// the older attempt is refused (CHECKPOINT_CONFLICT), so a coordinator
// that lost its leadership mid-step (a partitioned leader that has not yet
// noticed) cannot move the row behind the new one's back.
//
// The phase written is the row's (Resume, and Forward, whose Next takes the
// row to promote), or aborting for an Abort of a row not there yet (with
// the reason as its last error). Cleanup, Wait and Quarantine take nothing
// over: nil.
func (d Decision) TakeoverEntry() *metapb.Entry {
	next := d.Attempt + 1
	if next < d.Attempt { // an attempt counter at its limit cannot be fenced
		return nil
	}
	want := expectRow(d.From, d.Attempt)
	var c *metapb.Checkpoint
	switch d.Action {
	case Resume, Forward:
		c = Checkpoint(d.ID, d.From, next, d.Move)
	case Abort:
		m := d.Move
		if d.From != PhaseAborting {
			m = m.WithError(d.Reason)
		}
		c = Checkpoint(d.ID, PhaseAborting, next, m)
	default:
		return nil
	}
	return meta.NewPutCheckpointIf(c, want)
}
