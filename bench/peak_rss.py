"""Peak resident memory of this process, for the memory benchmarks (Linux /proc; ru_maxrss fallback)."""

from __future__ import annotations

import resource


def rss_kb(field: str = "VmRSS") -> int:
    """A memory field of /proc/self/status in kB (VmRSS = now, VmHWM = peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakRSS:
    """``with PeakRSS() as m: work()`` then ``m.before_kb`` / ``m.peak_kb`` (peak during the block)."""

    def __enter__(self) -> "PeakRSS":
        self.before_kb = rss_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")   # resets VmHWM to the current RSS
            self.exact = True
        except OSError:
            self.exact = False
        return self

    def __exit__(self, *exc) -> None:
        self.peak_kb = rss_kb("VmHWM") if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
