// hashicorp-bench: the craft-bench workload against hashicorp/raft (v1.1.2 as
// packaged by Debian), so both can be compared on the same machine.
//
//	hashicorp-bench [--nodes N] [--transport inmem|tcp] [--store inmem|bolt]
//	                [--clients C] [--depth K] [--payload P] [--seconds D]
//	                [--warmup W] [--heartbeat-ms 100] [--election-ms 100]
//	                [--lease-ms 50] [--commit-ms T] [--max-append M]
//	                [--dir DIR] [--progress-ms 1000] [--no-election]
//	                [--snapshot-ms MS] [--snapshot-threshold N] [--trailing-logs N]
//
// An N-node cluster in one process; C client goroutines each keep K Apply
// calls of P bytes outstanding on the leader (closed loop), retrying on the
// new leader after ErrNotLeader / ErrLeadershipLost. Operations completing
// during the warm-up are not counted. After the load the leader is shut down
// and the time until another node is leader is measured. stdout: ONE JSON
// line with craft-bench's fields; stderr: progress lines.
//
// Build (offline, Debian's packages):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o hashicorp-bench .
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb"
)

// ---- latency histogram: the same log-linear buckets as craft-bench ----

const (
	histSubBits = 6
	histSub     = 1 << histSubBits
	histBuckets = histSub*2 + histSub*58
)

type hist struct {
	count [histBuckets]uint64
	n     uint64
	max   uint64
}

func histBucket(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	msb := 63 - bits.LeadingZeros64(v)
	shift := msb - histSubBits
	i := shift*histSub + int(v>>uint(shift))
	if i >= histBuckets {
		i = histBuckets - 1
	}
	return i
}

func histValue(i int) uint64 {
	if i < 2*histSub {
		return uint64(i)
	}
	shift := uint(i/histSub - 1)
	low := uint64(i-int(shift)*histSub) << shift
	return low + ((uint64(1) << shift) >> 1)
}

func (h *hist) add(v uint64) {
	h.count[histBucket(v)]++
	h.n++
	if v > h.max {
		h.max = v
	}
}

func (h *hist) merge(o *hist) {
	for i := range h.count {
		h.count[i] += o.count[i]
	}
	h.n += o.n
	if o.max > h.max {
		h.max = o.max
	}
}

func (h *hist) pct(p float64) uint64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(p * float64(h.n))
	if rank >= h.n {
		rank = h.n - 1
	}
	var seen uint64
	for i := range h.count {
		seen += h.count[i]
		if seen > rank {
			v := histValue(i)
			if v < h.max {
				return v
			}
			return h.max
		}
	}
	return h.max
}

// ---- the FSM: counts bytes ----

type counterFSM struct {
	bytes   uint64
	entries uint64
}

func (f *counterFSM) Apply(l *raft.Log) interface{} {
	atomic.AddUint64(&f.bytes, uint64(len(l.Data)))
	atomic.AddUint64(&f.entries, 1)
	return nil
}

func (f *counterFSM) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	for _, l := range logs {
		if l.Type == raft.LogCommand {
			atomic.AddUint64(&f.bytes, uint64(len(l.Data)))
			atomic.AddUint64(&f.entries, 1)
		}
	}
	return out
}

type counterSnap struct{ state [16]byte }

func (f *counterFSM) Snapshot() (raft.FSMSnapshot, error) {
	s := &counterSnap{}
	binary.LittleEndian.PutUint64(s.state[0:], atomic.LoadUint64(&f.bytes))
	binary.LittleEndian.PutUint64(s.state[8:], atomic.LoadUint64(&f.entries))
	return s, nil
}

func (f *counterFSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	var st [16]byte
	if _, err := io.ReadFull(r, st[:]); err != nil {
		return err
	}
	atomic.StoreUint64(&f.bytes, binary.LittleEndian.Uint64(st[0:]))
	atomic.StoreUint64(&f.entries, binary.LittleEndian.Uint64(st[8:]))
	return nil
}

func (s *counterSnap) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s.state[:]); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *counterSnap) Release() {}

// ---- the cluster ----

type node struct {
	id    raft.ServerID
	addr  raft.ServerAddress
	fsm   *counterFSM
	logs  raft.LogStore
	stab  raft.StableStore
	bolt  *raftboltdb.BoltStore
	snaps raft.SnapshotStore
	trans raft.Transport
	r     *raft.Raft
}

type options struct {
	nodes, clients, depth, payload, maxAppend   int
	transport, store, dir                       string
	seconds, warmup                             float64
	heartbeatMs, electionMs, leaseMs, commitMs  int
	progressMs                                  int
	snapshotMs, snapshotThreshold, trailingLogs int // 0 = raft's default
	election, verbose                           bool
}

var (
	opt      options
	nodes    []*node
	phase    int32 // 0 warmup, 1 measure, 2 stop
	totalOps uint64
	retries  uint64
	failures uint64
)

func die(what string, err error) {
	fmt.Fprintf(os.Stderr, "hashicorp-bench: %s: %v\n", what, err)
	os.Exit(1)
}

func config(n *node, logger hclog.Logger) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = n.id
	c.HeartbeatTimeout = time.Duration(opt.heartbeatMs) * time.Millisecond
	c.ElectionTimeout = time.Duration(opt.electionMs) * time.Millisecond
	c.LeaderLeaseTimeout = time.Duration(opt.leaseMs) * time.Millisecond
	if opt.commitMs > 0 {
		c.CommitTimeout = time.Duration(opt.commitMs) * time.Millisecond
	}
	if opt.maxAppend > 0 {
		c.MaxAppendEntries = opt.maxAppend
	}
	if opt.snapshotMs > 0 {
		c.SnapshotInterval = time.Duration(opt.snapshotMs) * time.Millisecond
	}
	if opt.snapshotThreshold > 0 {
		c.SnapshotThreshold = uint64(opt.snapshotThreshold)
	}
	if opt.trailingLogs > 0 {
		c.TrailingLogs = uint64(opt.trailingLogs)
	}
	c.Logger = logger.Named(string(n.id))
	return c
}

func startCluster(tmpdir string) {
	level := hclog.Warn
	if opt.verbose {
		level = hclog.Info
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: level, Output: os.Stderr})
	var inmems []*raft.InmemTransport
	for i := 0; i < opt.nodes; i++ {
		n := &node{id: raft.ServerID(fmt.Sprintf("node%d", i)), fsm: &counterFSM{}}
		if opt.store == "bolt" {
			b, err := raftboltdb.NewBoltStore(filepath.Join(tmpdir, fmt.Sprintf("node%d.bolt", i)))
			if err != nil {
				die("bolt", err)
			}
			n.bolt, n.logs, n.stab = b, b, b
		} else {
			s := raft.NewInmemStore()
			n.logs, n.stab = s, s
		}
		n.snaps = raft.NewInmemSnapshotStore()
		if opt.transport == "tcp" {
			t, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 3, 10*time.Second,
				logger.Named("tcp"))
			if err != nil {
				die("tcp transport", err)
			}
			n.trans, n.addr = t, t.LocalAddr()
		} else {
			addr, t := raft.NewInmemTransport(raft.ServerAddress(fmt.Sprintf("inmem%d", i)))
			n.trans, n.addr = t, addr
			inmems = append(inmems, t)
		}
		nodes = append(nodes, n)
	}
	for _, a := range inmems {
		for _, b := range inmems {
			if a != b {
				a.Connect(b.LocalAddr(), b)
			}
		}
	}
	var cfg raft.Configuration
	for _, n := range nodes {
		cfg.Servers = append(cfg.Servers, raft.Server{Suffrage: raft.Voter, ID: n.id, Address: n.addr})
	}
	for _, n := range nodes {
		if err := raft.BootstrapCluster(config(n, logger), n.logs, n.stab, n.snaps, n.trans, cfg); err != nil {
			die("bootstrap", err)
		}
	}
	for _, n := range nodes {
		r, err := raft.NewRaft(config(n, logger), n.fsm, n.logs, n.stab, n.snaps, n.trans)
		if err != nil {
			die("NewRaft", err)
		}
		n.r = r
	}
}

// findLeader returns the node in state Leader (skipping `except`), or -1.
// Several can coexist briefly; any of them will do for the clients (a stale
// one fails the apply and the client retries).
func findLeader(except int) int {
	for i, n := range nodes {
		if i != except && n.r != nil && n.r.State() == raft.Leader {
			return i
		}
	}
	return -1
}

func waitLeader(except int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		if l := findLeader(except); l >= 0 || time.Now().After(deadline) {
			return l
		}
		time.Sleep(time.Millisecond)
	}
}

func procStatusKB(field string) int64 {
	b, err := ioutil.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line[len(field)+1:])
			if len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return -1
}

// ---- clients ----

type client struct {
	h   hist
	ops uint64
}

type slot struct {
	f     raft.ApplyFuture
	start time.Time
}

func submit(s *slot, payload []byte, start time.Time) bool {
	for {
		l := findLeader(-1)
		if l < 0 {
			if atomic.LoadInt32(&phase) == 2 {
				return false
			}
			time.Sleep(time.Millisecond)
			continue
		}
		s.f = nodes[l].r.Apply(payload, 0)
		s.start = start
		return true
	}
}

func runClient(c *client, payload []byte, wg *sync.WaitGroup) {
	defer wg.Done()
	ring := make([]slot, opt.depth)
	head, outstanding := 0, 0
	for {
		for outstanding < opt.depth && atomic.LoadInt32(&phase) != 2 {
			if !submit(&ring[(head+outstanding)%opt.depth], payload, time.Now()) {
				break
			}
			outstanding++
		}
		if outstanding == 0 {
			return
		}
		s := &ring[head]
		err := s.f.Error()
		s.f = nil
		switch {
		case err == nil:
			atomic.AddUint64(&totalOps, 1)
			if atomic.LoadInt32(&phase) == 1 {
				c.h.add(uint64(time.Since(s.start) / time.Microsecond))
				c.ops++
			}
		case err == raft.ErrNotLeader || err == raft.ErrLeadershipLost ||
			err == raft.ErrLeadershipTransferInProgress:
			atomic.AddUint64(&retries, 1)
			if atomic.LoadInt32(&phase) != 2 && submit(s, payload, s.start) {
				continue
			}
		case err == raft.ErrRaftShutdown:
		default:
			if atomic.AddUint64(&failures, 1) <= 5 {
				fmt.Fprintf(os.Stderr, "hashicorp-bench: apply: %v\n", err)
			}
		}
		head = (head + 1) % opt.depth
		outstanding--
	}
}

func progress(t float64, opsDelta uint64, dt float64) {
	l := findLeader(-1)
	var commit, last, lag uint64
	name := "none"
	if l >= 0 {
		st := nodes[l].r.Stats()
		commit, _ = strconv.ParseUint(st["commit_index"], 10, 64)
		last, _ = strconv.ParseUint(st["last_log_index"], 10, 64)
		name = string(nodes[l].id)
		for _, n := range nodes {
			if a := n.r.AppliedIndex(); commit > a && commit-a > lag {
				lag = commit - a
			}
		}
	}
	unc := uint64(0)
	if last > commit {
		unc = last - commit
	}
	ph := [...]string{"warmup", "measure", "stop"}[atomic.LoadInt32(&phase)]
	rate := 0.0
	if dt > 0 {
		rate = float64(opsDelta) / dt
	}
	fmt.Fprintf(os.Stderr, "hashicorp-bench: t=%.1fs phase=%s ops/s=%.0f total=%d rss_kb=%d "+
		"leader=%s commit=%d uncommitted=%d max_apply_lag=%d retries=%d\n",
		t, ph, rate, atomic.LoadUint64(&totalOps), procStatusKB("VmRSS"), name, commit, unc, lag,
		atomic.LoadUint64(&retries))
}

func runUntil(start, until time.Time, lastT *time.Time, lastOps *uint64) {
	step := time.Duration(opt.progressMs) * time.Millisecond
	for {
		now := time.Now()
		if !now.Before(until) {
			return
		}
		wake := until
		if step > 0 && lastT.Add(step).Before(until) {
			wake = lastT.Add(step)
		}
		time.Sleep(wake.Sub(now))
		now = time.Now()
		if step > 0 && !now.Before(lastT.Add(step)) {
			ops := atomic.LoadUint64(&totalOps)
			progress(now.Sub(start).Seconds(), ops-*lastOps, now.Sub(*lastT).Seconds())
			*lastOps, *lastT = ops, now
		}
	}
}

func main() {
	flag.IntVar(&opt.nodes, "nodes", 3, "cluster size")
	flag.StringVar(&opt.transport, "transport", "inmem", "inmem|tcp")
	flag.StringVar(&opt.store, "store", "inmem", "inmem|bolt")
	flag.IntVar(&opt.clients, "clients", 1, "client goroutines")
	flag.IntVar(&opt.depth, "depth", 1, "applies outstanding per client")
	flag.IntVar(&opt.payload, "payload", 64, "bytes per apply")
	flag.Float64Var(&opt.seconds, "seconds", 10, "measured seconds")
	flag.Float64Var(&opt.warmup, "warmup", 1, "warm-up seconds (not counted)")
	flag.IntVar(&opt.heartbeatMs, "heartbeat-ms", 100, "HeartbeatTimeout")
	flag.IntVar(&opt.electionMs, "election-ms", 100, "ElectionTimeout")
	flag.IntVar(&opt.leaseMs, "lease-ms", 50, "LeaderLeaseTimeout")
	flag.IntVar(&opt.commitMs, "commit-ms", 0, "CommitTimeout (0 = default 50)")
	flag.IntVar(&opt.maxAppend, "max-append", 0, "MaxAppendEntries (0 = default 64)")
	flag.IntVar(&opt.snapshotMs, "snapshot-ms", 0, "SnapshotInterval (0 = default 120000)")
	flag.IntVar(&opt.snapshotThreshold, "snapshot-threshold", 0, "SnapshotThreshold (0 = default 8192)")
	flag.IntVar(&opt.trailingLogs, "trailing-logs", 0, "TrailingLogs (0 = default 10240)")
	flag.StringVar(&opt.dir, "dir", os.TempDir(), "parent of the temporary store directory")
	flag.IntVar(&opt.progressMs, "progress-ms", 1000, "progress line period on stderr (0 = none)")
	noElection := flag.Bool("no-election", false, "skip the failover measurement")
	flag.BoolVar(&opt.verbose, "verbose", false, "raft INFO logs")
	flag.Parse()
	opt.election = !*noElection
	if opt.store == "sqlite" {
		opt.store = "bolt" // the durable store, whatever the caller calls it
	}
	if opt.nodes < 1 || opt.clients < 1 || opt.depth < 1 || opt.seconds <= 0 ||
		(opt.transport != "inmem" && opt.transport != "tcp") ||
		(opt.store != "inmem" && opt.store != "bolt") {
		flag.Usage()
		os.Exit(2)
	}

	tmpdir := ""
	if opt.store == "bolt" {
		var err error
		if tmpdir, err = ioutil.TempDir(opt.dir, "hashicorp-bench-"); err != nil {
			die("tempdir", err)
		}
		defer os.RemoveAll(tmpdir)
	}
	payload := make([]byte, opt.payload)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}

	startCluster(tmpdir)
	if waitLeader(-1, 30*time.Second) < 0 {
		die("startup", fmt.Errorf("no leader after 30 s"))
	}

	clients := make([]client, opt.clients)
	var wg sync.WaitGroup
	start := time.Now()
	lastT, lastOps := start, uint64(0)
	for i := range clients {
		wg.Add(1)
		go runClient(&clients[i], payload, &wg)
	}
	runUntil(start, start.Add(time.Duration(opt.warmup*float64(time.Second))), &lastT, &lastOps)
	mStart := time.Now()
	cpuStart := cpuSeconds()
	atomic.StoreInt32(&phase, 1)
	runUntil(start, mStart.Add(time.Duration(opt.seconds*float64(time.Second))), &lastT, &lastOps)
	atomic.StoreInt32(&phase, 2)
	mEnd := time.Now()
	cpu := cpuSeconds() - cpuStart
	rssKB, rssPeakKB, rssAnonKB := procStatusKB("VmRSS"), procStatusKB("VmHWM"), procStatusKB("RssAnon")
	// Compaction at work: the oldest snapshot any node holds (0 = one node
	// has taken none).
	minSnapshot := uint64(math.MaxUint64)
	for _, n := range nodes {
		v, _ := strconv.ParseUint(n.r.Stats()["last_snapshot_index"], 10, 64)
		if v < minSnapshot {
			minSnapshot = v
		}
	}
	if minSnapshot == math.MaxUint64 {
		minSnapshot = 0
	}
	wg.Wait()
	var all hist
	var ops uint64
	for i := range clients {
		all.merge(&clients[i].h)
		ops += clients[i].ops
	}
	window := mEnd.Sub(mStart).Seconds()
	cpuPerOp := 0.0
	if ops > 0 {
		cpuPerOp = round1(cpu * 1e6 / float64(ops))
	}

	electionMs := -1.0
	if opt.election && opt.nodes >= 3 {
		if old := waitLeader(-1, 10*time.Second); old >= 0 {
			t0 := time.Now()
			f := nodes[old].r.Shutdown()
			l := waitLeader(old, 30*time.Second)
			if l >= 0 {
				electionMs = float64(time.Since(t0)) / float64(time.Millisecond)
			}
			f.Error()
			nodes[old].r = nil
		}
	}

	out := result{
		Impl: "hashicorp", Nodes: opt.nodes, Transport: opt.transport, Store: opt.store,
		Clients: opt.clients, Depth: opt.depth, Payload: opt.payload,
		SnapshotMs: opt.snapshotMs, MinSnapshotIndex: minSnapshot,
		Seconds: round2(window), Ops: ops, OpsPerSec: round1(float64(ops) / window),
		P50us: all.pct(0.50), P99us: all.pct(0.99), MaxUs: all.max,
		ElectionMs: round1(electionMs), RssKB: rssKB, RssPeakKB: rssPeakKB, RssAnonKB: rssAnonKB,
		CPUusPerOp: cpuPerOp,
		Retries:    atomic.LoadUint64(&retries), Failures: atomic.LoadUint64(&failures),
		GoMaxProcs: runtime.GOMAXPROCS(0),
	}
	b, _ := json.Marshal(out)
	os.Stdout.Write(append(b, '\n'))

	for _, n := range nodes {
		if n.r != nil {
			n.r.Shutdown().Error()
		}
	}
	for _, n := range nodes {
		if n.bolt != nil {
			n.bolt.Close()
		}
		if c, ok := n.trans.(io.Closer); ok {
			c.Close()
		}
	}
	if atomic.LoadUint64(&failures) > 0 {
		os.RemoveAll(tmpdir)
		os.Exit(1)
	}
}

// result is the JSON line, in craft-bench's field order.
type result struct {
	Impl             string  `json:"impl"`
	Nodes            int     `json:"nodes"`
	Transport        string  `json:"transport"`
	Store            string  `json:"store"`
	Clients          int     `json:"clients"`
	Depth            int     `json:"depth"`
	Payload          int     `json:"payload"`
	SnapshotMs       int     `json:"snapshot_ms"`
	MinSnapshotIndex uint64  `json:"min_snapshot_index"`
	Seconds          float64 `json:"seconds"`
	Ops              uint64  `json:"ops"`
	OpsPerSec        float64 `json:"ops_per_sec"`
	P50us            uint64  `json:"p50_us"`
	P99us            uint64  `json:"p99_us"`
	MaxUs            uint64  `json:"max_us"`
	ElectionMs       float64 `json:"election_ms"`
	RssKB            int64   `json:"rss_kb"`
	RssPeakKB        int64   `json:"rss_peak_kb"`
	RssAnonKB        int64   `json:"rss_anon_kb"`
	CPUusPerOp       float64 `json:"cpu_us_per_op"`
	Retries          uint64  `json:"retries"`
	Failures         uint64  `json:"failures"`
	GoMaxProcs       int     `json:"gomaxprocs"`
}

// cpuSeconds is the process's user + system CPU time so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }
func round2(v float64) float64 { return math.Round(v*100) / 100 }
