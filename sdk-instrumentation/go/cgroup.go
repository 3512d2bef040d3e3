package memspan

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The cgroup memory limit, cgroup v2 first, v1 as the fallback. The parsers are pure functions over the text of
// /proc/self/cgroup and /proc/self/mountinfo plus a root directory, so tests lay out fake hierarchies in a
// temporary directory. The limit that matters is the smallest on the way from this process's cgroup up to the
// top of the mounted hierarchy: a parent's limit caps every child even when the child itself says "max".

// v1 writes "unlimited" as the largest page-aligned int64 (9223372036854771712) or close to it; nothing real is
// above 2^62 bytes.
const v1UnlimitedFloor = int64(1) << 62

// cgroupLocation is where this process's memory cgroup is.
type cgroupLocation struct {
	v2 bool
	// dir is the process's own cgroup directory; top is the mount point, where the walk for ancestor limits
	// stops (inclusive).
	dir, top string
}

// procCgroup holds the paths named in /proc/self/cgroup.
type procCgroup struct {
	v2       string // the unified hierarchy's path ("0::/path")
	v1Memory string // the v1 memory controller's path ("N:memory,...:/path")
}

func parseProcCgroup(text string) procCgroup {
	var out procCgroup
	for line := range strings.Lines(text) {
		parts := strings.SplitN(strings.TrimRight(line, "\n"), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			out.v2 = parts[2]
			continue
		}
		for c := range strings.SplitSeq(parts[1], ",") {
			if c == "memory" {
				out.v1Memory = parts[2]
			}
		}
	}
	return out
}

// mount is a cgroup line of /proc/self/mountinfo.
type mount struct {
	root, mountPoint, fstype, superOptions string
}

// parseMountinfo returns the cgroup and cgroup2 mounts; other lines are skipped.
func parseMountinfo(text string) []mount {
	var out []mount
	for line := range strings.Lines(text) {
		left, right, ok := strings.Cut(strings.TrimRight(line, "\n"), " - ")
		if !ok {
			continue
		}
		l := strings.Split(left, " ")
		r := strings.Split(right, " ")
		if len(l) < 5 || len(r) < 2 || (r[0] != "cgroup" && r[0] != "cgroup2") {
			continue
		}
		m := mount{root: unescapeMountinfo(l[3]), mountPoint: unescapeMountinfo(l[4]), fstype: r[0]}
		if len(r) >= 3 {
			m.superOptions = r[2]
		}
		out = append(out, m)
	}
	return out
}

// unescapeMountinfo undoes mountinfo's octal escapes of space, tab, newline and backslash ("\040").
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupDir maps a cgroup path onto a mount under root. A path outside the mount's root (a container that sees
// its host's path but has only its own subtree mounted) maps to the mount point itself.
func cgroupDir(root string, m mount, path string) string {
	mountRoot := strings.TrimRight(m.root, "/")
	below := ""
	if rest, ok := strings.CutPrefix(path, mountRoot); ok && (rest == "" || strings.HasPrefix(rest, "/")) {
		below = rest
	}
	return filepath.Join(root, m.mountPoint, below)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// locateCgroup finds the memory cgroup: v2 when its directory has the memory files, else the v1 memory
// controller; ok is false when neither is visible.
func locateCgroup(procCgroupText, mountinfoText, root string) (cgroupLocation, bool) {
	paths := parseProcCgroup(procCgroupText)
	mounts := parseMountinfo(mountinfoText)
	if paths.v2 != "" {
		for _, m := range mounts {
			if m.fstype != "cgroup2" {
				continue
			}
			dir := cgroupDir(root, m, paths.v2)
			if exists(filepath.Join(dir, "memory.max")) || exists(filepath.Join(dir, "memory.current")) {
				return cgroupLocation{v2: true, dir: dir, top: filepath.Join(root, m.mountPoint)}, true
			}
			break
		}
	}
	if paths.v1Memory == "" {
		return cgroupLocation{}, false
	}
	for _, m := range mounts {
		if m.fstype != "cgroup" || !hasOption(m.superOptions, "memory") {
			continue
		}
		dir := cgroupDir(root, m, paths.v1Memory)
		if exists(filepath.Join(dir, "memory.limit_in_bytes")) {
			return cgroupLocation{dir: dir, top: filepath.Join(root, m.mountPoint)}, true
		}
		break
	}
	return cgroupLocation{}, false
}

func hasOption(options, want string) bool {
	for o := range strings.SplitSeq(options, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// parseCgroupLimit reads a limit file's text; ok is false for unlimited ("max" in v2, near 2^63 in v1) and for
// text that is not a number.
func parseCgroupLimit(text string, v2 bool) (int64, bool) {
	t := strings.TrimSpace(text)
	if t == "max" {
		return 0, false
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || !v2 && v >= v1UnlimitedFloor {
		return 0, false
	}
	return v, true
}

// discoverCgroup locates this process's memory cgroup on the running machine.
func discoverCgroup() (cgroupLocation, bool) {
	pc, err1 := os.ReadFile("/proc/self/cgroup")
	mi, err2 := os.ReadFile("/proc/self/mountinfo")
	if err1 != nil || err2 != nil {
		return cgroupLocation{}, false
	}
	return locateCgroup(string(pc), string(mi), "/")
}

// limit is the effective limit: the minimum over the cgroup and its ancestors up to the mount point; -1 when
// all are unlimited.
func (l cgroupLocation) limit() int64 {
	file := "memory.limit_in_bytes"
	if l.v2 {
		file = "memory.max"
	}
	limit := int64(-1)
	dir := l.dir
	for {
		if text, err := os.ReadFile(filepath.Join(dir, file)); err == nil {
			if v, ok := parseCgroupLimit(string(text), l.v2); ok && (limit < 0 || v < limit) {
				limit = v
			}
		}
		if dir == l.top {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir || !strings.HasPrefix(parent, l.top) {
			break
		}
		dir = parent
	}
	return limit
}

// usage is the cgroup's own current memory usage (memory.current, v1 memory.usage_in_bytes); -1 if unreadable.
func (l cgroupLocation) usage() int64 {
	file := "memory.usage_in_bytes"
	if l.v2 {
		file = "memory.current"
	}
	text, err := os.ReadFile(filepath.Join(l.dir, file))
	if err != nil {
		return -1
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(text)), 10, 64)
	if err != nil {
		return -1
	}
	return v
}
