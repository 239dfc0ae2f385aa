"""This boot's id: what keel records beside a pid and its start time, so that state written
before a reboot never names a process of this boot."""


def boot_id() -> str:
    """This boot's id (changes at every reboot), "" when the kernel does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""
