//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one started program, in its own process group, with its output in
// a log file. Everything started through startProc is registered so that
// killAll (and bench/run.sh's EXIT trap, through the pgid file) can end it.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

var (
	procMu    sync.Mutex
	pgids     []int
	pgidFile  string // appended with every process group we start
	clockTick = 100.0
)

// register records a process group for killAll and for run.sh's EXIT trap.
func register(pgid int) {
	procMu.Lock()
	defer procMu.Unlock()
	pgids = append(pgids, pgid)
	if pgidFile != "" {
		if f, err := os.OpenFile(pgidFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintln(f, pgid)
			f.Close()
		}
	}
}

// startProc starts argv (pinned to cpu when cpu != "") with extra env,
// stdout and stderr going to logPath.
func startProc(name, cpu, logPath string, env []string, argv ...string) (*proc, error) {
	if cpu != "" {
		argv = append([]string{"taskset", "-c", cpu}, argv...)
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.Dir = filepath.Dir(logPath)
	// Own process group so a stop reaches every child (nginx workers); the
	// death signal is the last resort should the suite itself be killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(lf, "### %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	register(cmd.Process.Pid)
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs
// the group. Leftover group members (nginx workers) are killed as well.
func (p *proc) stop(grace time.Duration) {
	pg := p.pid()
	if !p.exited() {
		_ = syscall.Kill(-pg, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			fmt.Fprintf(os.Stderr, "suite: %s did not stop within %v of SIGTERM; SIGKILL\n", p.name, grace)
		}
	}
	_ = syscall.Kill(-pg, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
	}
}

// killAll kills every process group we started.
func killAll() {
	procMu.Lock()
	defer procMu.Unlock()
	for _, pg := range pgids {
		_ = syscall.Kill(-pg, syscall.SIGKILL)
	}
}

// logTail returns the last n lines of a log file.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// statFields returns the fields of /proc/PID/stat after the command name,
// so index 0 is field 3 (state), 1 is field 4 (ppid), 11 is field 14 (utime).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	return parseStat(b)
}

func parseStat(b []byte) ([]string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return nil, errors.New("short stat")
	}
	return f, nil
}

// treePIDs returns root and all its descendants (found through the ppid
// field of /proc/*/stat).
func treePIDs(root int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{root}
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := statFields(pid)
		if err != nil {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		children[pp] = append(children[pp], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// cpuTicks maps each pid of the tree to its utime+stime in clock ticks.
func cpuTicks(root int) map[int]int64 {
	m := map[int]int64{}
	for _, pid := range treePIDs(root) {
		f, err := statFields(pid)
		if err != nil {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		m[pid] = u + s
	}
	return m
}

// cpuDelta is the CPU seconds the tree spent between two samples. A pid
// that is new in the second sample counts from zero.
func cpuDelta(before, after map[int]int64) float64 {
	var t int64
	for pid, a := range after {
		t += a - before[pid]
	}
	return float64(t) / clockTick
}

// rssKiB is the sum of VmRSS over the tree.
func rssKiB(root int) int64 {
	var sum int64
	for _, pid := range treePIDs(root) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		sum += parseVmRSS(b)
	}
	return sum
}

func parseVmRSS(status []byte) int64 {
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				return v
			}
		}
	}
	return 0
}

func initClockTick() {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return
	}
	if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
		clockTick = v
	}
}

// busyTicks is the machine's busy CPU time from /proc/stat's "cpu" line
// (user nice system irq softirq steal), in clock ticks.
func busyTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line := firstLine(string(b))
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var t int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system (idle iowait) irq softirq steal
		v, _ := strconv.ParseInt(f[i], 10, 64)
		t += v
	}
	return t
}

// job is a load program running to completion with a deadline.
type job struct {
	argv   []string
	cmd    *exec.Cmd
	so, se bytes.Buffer
	done   chan error
	limit  time.Duration
}

// startJob starts argv pinned to cpu; wait collects it, killing it once
// timeout has passed since the start.
func startJob(timeout time.Duration, cpu string, argv ...string) (*job, error) {
	name := filepath.Base(argv[0])
	if cpu != "" {
		argv = append([]string{"taskset", "-c", cpu}, argv...)
	}
	j := &job{argv: argv, done: make(chan error, 1), limit: timeout}
	j.cmd = exec.Command(argv[0], argv[1:]...)
	j.cmd.Stdout = &j.so
	j.cmd.Stderr = &j.se
	j.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := j.cmd.Start(); err != nil {
		return nil, err
	}
	register(j.cmd.Process.Pid)
	start := time.Now()
	go func() {
		t := time.AfterFunc(timeout-time.Since(start), func() {
			_ = syscall.Kill(-j.cmd.Process.Pid, syscall.SIGKILL)
		})
		err := j.cmd.Wait()
		if !t.Stop() {
			err = fmt.Errorf("%s: killed after %v (deadline)", name, timeout)
		}
		j.done <- err
	}()
	return j, nil
}

func (j *job) wait() (stdout, stderr string, err error) {
	err = <-j.done
	j.done <- err
	return j.so.String(), j.se.String(), err
}

// cpuSeconds is the CPU the finished job used (taskset execs the program,
// so this is the load generator itself).
func (j *job) cpuSeconds() float64 {
	if j.cmd.ProcessState == nil {
		return 0
	}
	return (j.cmd.ProcessState.UserTime() + j.cmd.ProcessState.SystemTime()).Seconds()
}

// runCmd runs argv to completion within timeout, pinned to cpu.
func runCmd(timeout time.Duration, cpu string, argv ...string) (stdout, stderr string, err error) {
	stdout, stderr, _, err = runJob(timeout, cpu, argv...)
	return
}

// runJob is runCmd that also returns the CPU seconds the program used.
func runJob(timeout time.Duration, cpu string, argv ...string) (stdout, stderr string, cpu_s float64, err error) {
	j, err := startJob(timeout, cpu, argv...)
	if err != nil {
		return "", "", 0, err
	}
	stdout, stderr, err = j.wait()
	return stdout, stderr, j.cpuSeconds(), err
}
