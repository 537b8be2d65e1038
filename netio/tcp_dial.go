package netio

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"time"

	"github.com/panjf2000/gnet/v2"
	"go.uber.org/zap"
)

// dialLoop keeps one connection to a peer this node dials (the peer has the higher ID).
// It runs in its own goroutine, never on an event loop: it blocks in the TCP connect
// and in waiting for gnet's RegisteredResult, which is only delivered after OnOpen has
// run on the target loop and so would deadlock if awaited from that loop.
//
// Backoff doubles from ReconnectMin to ReconnectMax after every failed attempt
// (connect, register or handshake), with jitter so that nodes restarted together do
// not redial in lockstep; a connection on which the peer admitted this node (it sent
// ctlAdmitted) resets it. A connection the peer refused after this side established
// it (the acceptor's AdmitPeer said no) counts as failed, so a refused node does not
// redial every ReconnectMin.
func (t *TCPTransport) dialLoop(p *peer) {
	defer t.dialWG.Done()
	step := t.opts.ReconnectMin
	failures := 0
	for {
		cs, err := t.dial(p)
		if t.ctx.Err() != nil {
			return
		}
		if err != nil {
			t.stats.dialFailures.Add(1)
			failures++
			level := zap.DebugLevel
			if failures == 1 {
				level = zap.InfoLevel // once per outage; the rest would flood the log
			}
			if ce := t.log.Check(level, "dial failed"); ce != nil {
				ce.Write(zap.Uint64("peer", uint64(p.id)), zap.String("addr", p.addr),
					zap.Int("failures", failures), zap.Error(err))
			}
		} else {
			select {
			case <-cs.closed:
			case <-t.ctx.Done():
				return
			}
			if cs.peerAdmitted.Load() {
				step, failures = t.opts.ReconnectMin, 0
			}
		}
		if !t.sleep(jitter(step)) {
			return
		}
		step = min(2*step, t.opts.ReconnectMax)
	}
}

// dial connects with the dial timeout gnet lacks and hands the socket to the engine,
// which dups the fd, closes nc and runs OnOpen on one of its loops.
func (t *TCPTransport) dial(p *peer) (*connState, error) {
	d := net.Dialer{Timeout: t.opts.DialTimeout}
	nc, err := d.DialContext(t.ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	cs := &connState{outbound: true, peer: p, closed: make(chan struct{})}
	ctx := gnet.NewNetConnContext(gnet.NewContext(context.Background(), cs), nc)
	ch, err := t.eng.Register(ctx)
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	res, ok := <-ch
	if !ok || res.Err != nil || res.Conn == nil {
		if res.Err == nil {
			res.Err = errors.New("gnet register returned no connection")
		}
		return nil, res.Err
	}
	return cs, nil
}

// sleep waits d or until Close; it reports whether to go on.
func (t *TCPTransport) sleep(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-t.ctx.Done():
		return false
	}
}

// jitter returns a duration in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(d-half+1)
}
