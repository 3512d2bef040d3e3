package memspan

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseStatm(t *testing.T) {
	cases := []struct {
		in             string
		size, resident int64
		ok             bool
	}{
		{"765 418 390 5 0 123 0\n", 765, 418, true},
		{"765 418", 765, 418, true},
		{"765", 0, 0, false},
		{"7a5 418 0", 0, 0, false},
		{"765 4x8 0", 0, 0, false},
		{"", 0, 0, false},
		{"99999999999999999999999 1 0", 0, 0, false},
	}
	for _, c := range cases {
		size, res, ok := parseStatm([]byte(c.in))
		if size != c.size || res != c.resident || ok != c.ok {
			t.Errorf("parseStatm(%q) = %d %d %v, want %d %d %v", c.in, size, res, ok, c.size, c.resident, c.ok)
		}
	}
}

func TestRSSProbeReadsAFixtureAndSharesReadings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "statm")
	if err := os.WriteFile(path, []byte("2571 1024 300 150 0 900 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := newRSSProbe(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	page := int64(os.Getpagesize())
	if got := p.rss(1); got != 1024*page {
		t.Errorf("rss %d, want %d", got, 1024*page)
	}
	// Within max age the shared reading is reused; rssNow reads again.
	if err := os.WriteFile(path, []byte("2571 2048 300 150 0 900 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := p.rss(2); got != 1024*page {
		t.Errorf("shared rss %d, want the cached %d", got, 1024*page)
	}
	if got := p.rssNow(); got != 2048*page {
		t.Errorf("rssNow %d, want %d", got, 2048*page)
	}
	if _, err := newRSSProbe(filepath.Join(t.TempDir(), "missing"), 0); err == nil {
		t.Error("a missing statm must be an error")
	}
	if got, _ := newRSSProbe("testdata/statm", 0); got == nil || got.rss(0) != 1024*page {
		t.Error("testdata/statm")
	}
}

func TestTheOwnRSSIsPlausible(t *testing.T) {
	p, err := newRSSProbe("/proc/self/statm", 0)
	if err != nil {
		t.Skip("no procfs:", err)
	}
	defer p.close()
	if rss := p.rss(0); rss < 1<<20 || rss > 1<<40 {
		t.Errorf("own RSS %d bytes", rss)
	}
}

// writeFiles lays out files (path relative to root -> content).
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

const mountinfoV2 = `22 1 0:21 / / rw,relatime - overlay overlay rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
`

func TestCgroupV2LimitIsTheSmallestOnThePath(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"sys/fs/cgroup/memory.max":                             "max\n",
		"sys/fs/cgroup/kubepods/memory.max":                    "2147483648\n",
		"sys/fs/cgroup/kubepods/pod1/memory.max":               "max\n",
		"sys/fs/cgroup/kubepods/pod1/memory.current":           "123456\n",
		"sys/fs/cgroup/kubepods/pod1/container/memory.max":     "4294967296\n",
		"sys/fs/cgroup/kubepods/pod1/container/memory.current": "654321\n",
	})
	loc, ok := locateCgroup("0::/kubepods/pod1/container\n", mountinfoV2, root)
	if !ok || !loc.v2 || loc.dir != filepath.Join(root, "sys/fs/cgroup/kubepods/pod1/container") {
		t.Fatalf("location %+v %v", loc, ok)
	}
	if got := loc.limit(); got != 2147483648 {
		t.Errorf("limit %d, want the parent's 2 GiB", got)
	}
	if got := loc.usage(); got != 654321 {
		t.Errorf("usage %d", got)
	}
	// Unlimited all the way up.
	loc, _ = locateCgroup("0::/\n", mountinfoV2, root)
	if got := loc.limit(); got != -1 {
		t.Errorf("root limit %d, want -1 (max)", got)
	}
}

func TestCgroupV1AndMountsThatHideTheHostPath(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912\n",
		"sys/fs/cgroup/memory/memory.usage_in_bytes": "1000\n",
	})
	// The container sees its host path (/docker/abc) but only its own subtree is mounted, with that root.
	mountinfo := "40 22 0:35 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n" +
		"41 22 0:36 /docker/abc /sys/fs/cgroup/cpu ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
	loc, ok := locateCgroup("12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n0::/\n", mountinfo, root)
	if !ok || loc.v2 || loc.dir != filepath.Join(root, "sys/fs/cgroup/memory") {
		t.Fatalf("location %+v %v", loc, ok)
	}
	if loc.limit() != 536870912 || loc.usage() != 1000 {
		t.Errorf("limit %d usage %d", loc.limit(), loc.usage())
	}
	writeFiles(t, root, map[string]string{"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"})
	if got := loc.limit(); got != -1 {
		t.Errorf("v1 unlimited read as %d", got)
	}
	if _, ok := locateCgroup("11:memory:/x\n", "", root); ok {
		t.Error("no mounts: located anyway")
	}
}

func TestCgroupTextParsers(t *testing.T) {
	if v, ok := parseCgroupLimit("max\n", true); ok {
		t.Errorf("max parsed as %d", v)
	}
	if v, ok := parseCgroupLimit("  1024\n", true); !ok || v != 1024 {
		t.Errorf("1024 parsed as %d %v", v, ok)
	}
	if _, ok := parseCgroupLimit("garbage", true); ok {
		t.Error("garbage parsed")
	}
	mounts := parseMountinfo(`50 22 0:40 / /sys/fs/cgroup\040x rw - cgroup2 cgroup2 rw` + "\nnot a mountinfo line\n")
	if len(mounts) != 1 || mounts[0].mountPoint != "/sys/fs/cgroup x" {
		t.Errorf("mounts %+v", mounts)
	}
	pc := parseProcCgroup("0::/a/b\n4:memory,hugetlb:/c\nbroken\n")
	if pc.v2 != "/a/b" || pc.v1Memory != "/c" {
		t.Errorf("proc cgroup %+v", pc)
	}
}
