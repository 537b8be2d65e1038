package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// floor is the physical lower bound of one proposal's latency on this machine: a
// durable append on the replicas' disk plus one network round trip. A Multi-Paxos
// instance on the fast path needs at least one of each (Accept out, fsync at the
// acceptors, Accepted back; the proposer's own fsync runs in parallel).
type floor struct {
	FsyncUs float64 // median latency of a 100-byte append + fdatasync, three files at once
	RTTUs   float64 // median loopback TCP round trip of a 16-byte ping-pong
}

func (f floor) totalUs() float64 { return f.FsyncUs + f.RTTUs }

func (f floor) String() string {
	return fmt.Sprintf("floor fsync_us=%.0f rtt_us=%.0f floor_us=%.0f", f.FsyncUs, f.RTTUs, f.totalUs())
}

// measureFloor runs both probes in dir (which must be on the disk the replicas use).
func measureFloor(dir string, fsyncRounds, pings int) (floor, error) {
	fs, err := measureFsync(dir, fsyncRounds)
	if err != nil {
		return floor{}, err
	}
	rtt, err := measureRTT(pings)
	if err != nil {
		return floor{}, err
	}
	return floor{FsyncUs: us(fs), RTTUs: us(rtt)}, nil
}

func us(d time.Duration) float64 { return float64(d) / 1e3 }

// measureFsync: three writers, one file each (as three replicas on one disk have
// three WALs), start every round together; each appends 100 bytes and fdatasyncs.
// Returns the median over all samples.
func measureFsync(dir string, rounds int) (time.Duration, error) {
	const writers = 3
	files := make([]*os.File, writers)
	for i := range files {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("floor-%d.log", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o644)
		if err != nil {
			return 0, err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		files[i] = f
	}
	buf := make([]byte, 100)
	for i := range buf {
		buf[i] = 'f'
	}
	samples := make([]time.Duration, 0, rounds*writers)
	var mu sync.Mutex
	var firstErr error
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, f := range files {
			wg.Add(1)
			go func(f *os.File) {
				defer wg.Done()
				<-start
				t0 := time.Now()
				_, err := f.Write(buf)
				if err == nil {
					err = syscall.Fdatasync(int(f.Fd()))
				}
				d := time.Since(t0)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				samples = append(samples, d)
				mu.Unlock()
			}(f)
		}
		close(start)
		wg.Wait()
		if firstErr != nil {
			return 0, fmt.Errorf("fsync probe: %w", firstErr)
		}
	}
	return median(samples), nil
}

// measureRTT: one loopback TCP connection (Go sets TCP_NODELAY), n ping-pongs of 16
// bytes; returns the median round trip.
func measureRTT(n int) (time.Duration, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 16)
		for {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	b := make([]byte, 16)
	samples := make([]time.Duration, 0, n)
	for i := 0; i < n+n/10; i++ { // the first tenth warms up and is dropped
		t0 := time.Now()
		if _, err := c.Write(b); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, err
		}
		if i >= n/10 {
			samples = append(samples, time.Since(t0))
		}
	}
	return median(samples), nil
}

func median(s []time.Duration) time.Duration {
	if len(s) == 0 {
		return 0
	}
	s = slices.Clone(s)
	slices.Sort(s)
	return s[len(s)/2]
}
