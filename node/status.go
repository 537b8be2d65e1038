package node

import (
	"bytes"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
	"github.com/multipaxos/engine/instance"
	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/zap"
)

// msgNodeStatus is the node-wide status frame: every group's Next in one message
// per peer per StatusInterval, instead of one probe per group. A member that fell
// behind in a group that has gone quiet learns of it from here.
const msgNodeStatus uint8 = 127

func (n *Node) sendNodeStatus() {
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	_ = e.EncodeArrayLen(len(n.groups))
	for _, r := range n.groups {
		_ = e.EncodeUint(uint64(r.replica.Next()))
	}
	for id := range n.opts.Members {
		if id != n.opts.NodeID {
			n.tr.Send(id, 0, msgNodeStatus, buf.Bytes())
		}
	}
}

// onNodeStatus compares a peer's progress with ours, group by group, and lets each
// group that differs handle it as a Status message: the one behind asks to learn.
func (n *Node) onNodeStatus(from ids.NodeID, body []byte) {
	if _, ok := n.opts.Members[from]; !ok {
		return
	}
	r := bytes.NewReader(body)
	d := msgpack.NewDecoder(r)
	count, err := d.DecodeArrayLen()
	if err != nil || count < 0 || count > r.Len() {
		n.log.Warn("bad node status dropped", zap.Uint64("from", uint64(from)), zap.Int("count", count), zap.Error(err))
		return
	}
	for g := 0; g < count && g < len(n.groups); g++ {
		next, err := d.DecodeUint64()
		if err != nil {
			n.log.Warn("bad node status dropped", zap.Uint64("from", uint64(from)), zap.Error(err))
			return
		}
		rn := n.groups[g]
		if ids.InstanceID(next) == rn.replica.Next() {
			continue
		}
		m := instance.Message{Type: instance.MsgStatus, From: from, To: n.opts.NodeID, Next: ids.InstanceID(next)}
		rn.post(func(rep *group.Replica) { _ = rep.Step(m) })
	}
}
