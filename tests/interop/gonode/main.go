// gonode: a hashicorp/raft (Debian's v1.1.2) node driven over stdin/stdout,
// the Go half of craft's interop suite (tests/interop/test_interop.c). Its
// twin in C is tests/interop/craft_node.c: same flags, same control
// protocol, same FSM and snapshot format, so the test drives both alike.
//
// Start-up: the node opens its TCP transport and prints "ready <addr>".
// Then, one command per line, one reply line each:
//
//	bootstrap <id>=<addr>[,<id>=<addr>...]  bootstrap the stores, start  -> ok | err <msg>
//	start                                   start without bootstrapping -> ok | err <msg>
//	apply <data>                            -> ok <index> | err <msg>
//	state                                   -> state <Follower|Candidate|Leader|Shutdown>
//	leader                                  -> leader <addr> | leader none
//	hash                                    -> hash <count> <16 hex digits>
//	list                                    -> list <count> <index>:<data>...
//	addvoter <id> <addr>                    -> ok <index> | err <msg>
//	removeserver <id>                       -> ok <index> | err <msg>
//	transfer [<id> <addr>]                  -> ok | err <msg>
//	snapshot                                -> ok | err <msg>
//	appliedindex                            -> appliedindex <n>
//	stats                                   -> stats <restores> <last_snapshot_index> <term> <last_index>
//	quit                                    -> bye (after shutting down)
//
// FSM: an append-only list of (index, data) and a rolling FNV-1a 64 hash
// over the data bytes in apply order. Snapshot format (identical in C): per
// entry, index as u64 big-endian, data length as u32 big-endian, the data.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb"
)

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
	opTimeout = 10 * time.Second
)

type entry struct {
	index uint64
	data  []byte
}

type fsm struct {
	mu       sync.Mutex
	entries  []entry
	hash     uint64
	restores int
}

func fnv(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

func (f *fsm) Apply(l *raft.Log) interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := append([]byte(nil), l.Data...)
	f.entries = append(f.entries, entry{l.Index, d})
	f.hash = fnv(f.hash, d)
	return nil
}

type fsmSnapshot struct{ entries []entry }

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// entries is append-only between restores: the prefix never changes.
	return &fsmSnapshot{f.entries[:len(f.entries):len(f.entries)]}, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriter(sink)
	var hdr [12]byte
	for _, e := range s.entries {
		binary.BigEndian.PutUint64(hdr[0:8], e.index)
		binary.BigEndian.PutUint32(hdr[8:12], uint32(len(e.data)))
		if _, err := w.Write(hdr[:]); err != nil {
			sink.Cancel()
			return err
		}
		if _, err := w.Write(e.data); err != nil {
			sink.Cancel()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	r := bufio.NewReader(rc)
	var entries []entry
	h := uint64(fnvOffset)
	var hdr [12]byte
	for {
		if _, err := io.ReadFull(r, hdr[:1]); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		if _, err := io.ReadFull(r, hdr[1:]); err != nil {
			return fmt.Errorf("truncated snapshot record: %v", err)
		}
		d := make([]byte, binary.BigEndian.Uint32(hdr[8:12]))
		if _, err := io.ReadFull(r, d); err != nil {
			return fmt.Errorf("truncated snapshot data: %v", err)
		}
		entries = append(entries, entry{binary.BigEndian.Uint64(hdr[0:8]), d})
		h = fnv(h, d)
	}
	f.mu.Lock()
	f.entries, f.hash = entries, h
	f.restores++
	f.mu.Unlock()
	return nil
}

// wait bounds a future's completion (hashicorp's only bound enqueueing).
func wait(fn func() error) error {
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	select {
	case err := <-ch:
		return err
	case <-time.After(opTimeout):
		return errors.New("timeout waiting for the future")
	}
}

// parsePeers reads "<id>=<addr>,<id>=<addr>..." into a configuration of voters.
func parsePeers(s string) (raft.Configuration, error) {
	var cfg raft.Configuration
	for _, p := range strings.Split(s, ",") {
		kv := strings.SplitN(p, "=", 2)
		if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
			return cfg, fmt.Errorf("bad peer %q", p)
		}
		cfg.Servers = append(cfg.Servers, raft.Server{
			Suffrage: raft.Voter, ID: raft.ServerID(kv[0]), Address: raft.ServerAddress(kv[1])})
	}
	return cfg, nil
}

func errLine(err error) string {
	return "err " + strings.ReplaceAll(err.Error(), "\n", " ")
}

func main() {
	id := flag.String("id", "", "server ID (required)")
	bind := flag.String("bind", "127.0.0.1:0", "raft bind address (advertised as bound)")
	dir := flag.String("dir", "", "data directory (required)")
	hb := flag.Int("heartbeat", 200, "HeartbeatTimeout, ms")
	el := flag.Int("election", 200, "ElectionTimeout, ms")
	lease := flag.Int("lease", 100, "LeaderLeaseTimeout, ms")
	commit := flag.Int("commit", 10, "CommitTimeout, ms")
	snapThr := flag.Uint64("snapshot-threshold", 8192, "SnapshotThreshold")
	snapInt := flag.Int("snapshot-interval", 120000, "SnapshotInterval, ms")
	trailing := flag.Uint64("trailing-logs", 10240, "TrailingLogs")
	inmem := flag.Bool("inmem", false, "in-memory log/stable store instead of boltdb")
	flag.Parse()
	if *id == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "gonode: -id and -dir are required")
		os.Exit(2)
	}

	logger := hclog.New(&hclog.LoggerOptions{
		Name: "gonode-" + *id, Level: hclog.Debug, Output: os.Stderr,
	})
	conf := raft.DefaultConfig()
	conf.ProtocolVersion = 3
	conf.LocalID = raft.ServerID(*id)
	conf.HeartbeatTimeout = time.Duration(*hb) * time.Millisecond
	conf.ElectionTimeout = time.Duration(*el) * time.Millisecond
	conf.LeaderLeaseTimeout = time.Duration(*lease) * time.Millisecond
	conf.CommitTimeout = time.Duration(*commit) * time.Millisecond
	conf.SnapshotThreshold = *snapThr
	conf.SnapshotInterval = time.Duration(*snapInt) * time.Millisecond
	conf.TrailingLogs = *trailing
	conf.Logger = logger
	if err := raft.ValidateConfig(conf); err != nil {
		fmt.Fprintln(os.Stderr, "gonode: config:", err)
		os.Exit(2)
	}

	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "gonode:", err)
		os.Exit(1)
	}
	var logs raft.LogStore
	var stable raft.StableStore
	if *inmem {
		s := raft.NewInmemStore()
		logs, stable = s, s
	} else {
		s, err := raftboltdb.NewBoltStore(filepath.Join(*dir, "raft.db"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "gonode: boltdb:", err)
			os.Exit(1)
		}
		logs, stable = s, s
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(*dir, 2, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gonode: snapshots:", err)
		os.Exit(1)
	}
	trans, err := raft.NewTCPTransportWithLogger(*bind, nil, 3, 10*time.Second, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gonode: transport:", err)
		os.Exit(1)
	}

	out := bufio.NewWriter(os.Stdout)
	reply := func(format string, a ...interface{}) {
		fmt.Fprintf(out, format+"\n", a...)
		out.Flush()
	}
	reply("ready %s", trans.LocalAddr())

	f := &fsm{hash: fnvOffset}
	var r *raft.Raft
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<16), 1<<20)
	for in.Scan() {
		args := strings.Fields(in.Text())
		if len(args) == 0 {
			continue
		}
		cmd := args[0]
		if r == nil && cmd != "bootstrap" && cmd != "start" && cmd != "quit" {
			reply("err not started")
			continue
		}
		switch {
		case (cmd == "bootstrap" && len(args) == 2) || (cmd == "start" && len(args) == 1):
			if r != nil {
				reply("err already started")
				continue
			}
			if cmd == "bootstrap" {
				cfg, err := parsePeers(args[1])
				if err != nil {
					reply("%s", errLine(err))
					continue
				}
				if err := raft.BootstrapCluster(conf, logs, stable, snaps, trans, cfg); err != nil {
					reply("%s", errLine(err))
					continue
				}
			}
			r, err = raft.NewRaft(conf, f, logs, stable, snaps, trans)
			if err != nil {
				reply("%s", errLine(err))
				continue
			}
			reply("ok")
		case cmd == "apply" && len(args) == 2:
			fut := r.Apply([]byte(args[1]), opTimeout)
			if err := wait(fut.Error); err != nil {
				reply("%s", errLine(err))
			} else {
				reply("ok %d", fut.Index())
			}
		case cmd == "state":
			reply("state %s", r.State())
		case cmd == "leader":
			if l := r.Leader(); l != "" {
				reply("leader %s", l)
			} else {
				reply("leader none")
			}
		case cmd == "hash":
			f.mu.Lock()
			reply("hash %d %016x", len(f.entries), f.hash)
			f.mu.Unlock()
		case cmd == "list":
			var b strings.Builder
			f.mu.Lock()
			fmt.Fprintf(&b, "list %d", len(f.entries))
			for _, e := range f.entries {
				fmt.Fprintf(&b, " %d:%s", e.index, e.data)
			}
			f.mu.Unlock()
			reply("%s", b.String())
		case cmd == "addvoter" && len(args) == 3:
			fut := r.AddVoter(raft.ServerID(args[1]), raft.ServerAddress(args[2]), 0, opTimeout)
			if err := wait(fut.Error); err != nil {
				reply("%s", errLine(err))
			} else {
				reply("ok %d", fut.Index())
			}
		case cmd == "removeserver" && len(args) == 2:
			fut := r.RemoveServer(raft.ServerID(args[1]), 0, opTimeout)
			if err := wait(fut.Error); err != nil {
				reply("%s", errLine(err))
			} else {
				reply("ok %d", fut.Index())
			}
		case cmd == "transfer" && (len(args) == 1 || len(args) == 3):
			var fut raft.Future
			if len(args) == 1 {
				fut = r.LeadershipTransfer()
			} else {
				fut = r.LeadershipTransferToServer(raft.ServerID(args[1]), raft.ServerAddress(args[2]))
			}
			if err := wait(fut.Error); err != nil {
				reply("%s", errLine(err))
			} else {
				reply("ok")
			}
		case cmd == "snapshot":
			fut := r.Snapshot()
			if err := wait(fut.Error); err != nil {
				reply("%s", errLine(err))
			} else {
				reply("ok")
			}
		case cmd == "appliedindex":
			reply("appliedindex %d", r.AppliedIndex())
		case cmd == "stats":
			s := r.Stats()
			f.mu.Lock()
			n := f.restores
			f.mu.Unlock()
			reply("stats %d %s %s %s", n, s["last_snapshot_index"], s["term"], s["last_log_index"])
		case cmd == "quit":
			if r != nil {
				r.Shutdown().Error()
			}
			trans.Close()
			reply("bye")
			return
		default:
			reply("err unknown command %q", in.Text())
		}
	}
}
