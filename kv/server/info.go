package server

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/multipaxos/engine/group"
	"github.com/multipaxos/engine/ids"
)

// infoSections are INFO's sections in order; INFO with no argument (or all,
// everything, default) shows them all.
var infoSections = []string{"server", "clients", "stats", "replication", "paxos", "groups"}

func cmdInfo(c *call) string {
	want := map[string]bool{}
	for _, a := range c.args[1:] {
		want[strings.ToLower(string(a))] = true
	}
	all := len(want) == 0 || want["all"] || want["everything"] || want["default"]
	var b strings.Builder
	for _, sec := range infoSections {
		if all || want[sec] {
			if b.Len() > 0 {
				b.WriteString("\r\n")
			}
			c.s.writeInfo(&b, sec)
		}
	}
	c.conn.WriteBulkString(b.String())
	return ""
}

func (s *Server) writeInfo(b *strings.Builder, sec string) {
	line := func(k string, v any) { fmt.Fprintf(b, "%s:%v\r\n", k, v) }
	groups := s.cfg.Client.Groups()
	switch sec {
	case "server":
		b.WriteString("# Server\r\n")
		line("redis_version", redisVersion)
		line("shardkv", "Redis-protocol KV on Multi-Paxos groups")
		line("redis_mode", "standalone")
		line("process_id", os.Getpid())
		line("tcp_addr", s.ln.Addr())
		line("uptime_in_seconds", int64(time.Since(s.started).Seconds()))
		if s.cfg.Node != nil {
			line("node_id", s.cfg.Node.ID())
		}
		line("groups", groups)
	case "clients":
		b.WriteString("# Clients\r\n")
		line("connected_clients", s.conns.Load())
	case "stats":
		b.WriteString("# Stats\r\n")
		line("total_commands_processed", s.commands.Load())
		line("total_error_replies", s.errs.Load())
	case "replication":
		// Every member takes writes (the engine forwards them to each group's
		// master), so to a Redis client each replica is a master; the real
		// roles are per group.
		b.WriteString("# Replication\r\n")
		line("role", "master")
		if s.cfg.Node == nil {
			return
		}
		var mine, others, none int
		for g := 0; g < groups; g++ {
			switch m, _ := s.cfg.Node.Master(ids.GroupID(g)); m {
			case 0:
				none++
			case s.cfg.Node.ID():
				mine++
			default:
				others++
			}
		}
		line("groups_master_here", mine)
		line("groups_master_elsewhere", others)
		line("groups_without_master", none)
	case "paxos":
		b.WriteString("# Paxos\r\n")
		if s.cfg.Node == nil {
			return
		}
		st := s.cfg.Node.Stats()
		line("log_batches", st.Log.Batches)
		line("log_writes", st.Log.Writes)
		line("log_fsyncs", st.Log.Syncs)
		line("log_bytes", st.Log.Bytes)
		line("net_frames_sent", st.Transport.FramesSent)
		line("net_frames_received", st.Transport.FramesReceived)
		line("net_bytes_sent", st.Transport.BytesSent)
		line("net_bytes_received", st.Transport.BytesReceived)
		line("net_conns_opened", st.Transport.ConnsOpened)
		line("store_verified", boolInt(st.Verified))
		line("peers_refused", st.PeersRefused)
		var proposed, commands uint64
		for g := 0; g < groups; g++ {
			gs, err := s.groupStats(g)
			if err != nil {
				continue
			}
			proposed += gs.Proposed
			commands += gs.Commands
		}
		line("instances_proposed", proposed)
		line("commands_executed_own", commands)
		if proposed > 0 {
			line("commands_per_instance", fmt.Sprintf("%.2f", float64(commands)/float64(proposed)))
		}
	case "groups":
		b.WriteString("# Groups\r\n")
		if s.cfg.Node == nil {
			return
		}
		for g := 0; g < groups; g++ {
			gs, err := s.groupStats(g)
			if err != nil {
				line(fmt.Sprint("group", g), "error="+strings.ReplaceAll(err.Error(), " ", "_"))
				continue
			}
			m, _ := s.cfg.Node.Master(ids.GroupID(g))
			role := "follower"
			switch m {
			case 0:
				role = "none"
			case s.cfg.Node.ID():
				role = "master"
			}
			line(fmt.Sprint("group", g), fmt.Sprintf(
				"role=%s,master=%d,next=%d,applied=%d,queued=%d,proposed=%d,commands=%d,synced_writes=%d,lazy_writes=%d,prepares=%d,fast_accepts=%d,learned=%d",
				role, m, gs.Next, gs.Applied, gs.Queued, gs.Proposed, gs.Commands, gs.SyncedWrites, gs.LazyWrites,
				gs.Core.PreparesStarted, gs.Core.FastAccepts, gs.Core.Learned))
		}
	}
}

func (s *Server) groupStats(g int) (group.Stats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return s.cfg.Node.GroupStats(ctx, ids.GroupID(g))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
