/*
 * tests/fuzz/fuzz_config.c - libFuzzer target for config_load(), the
 * configuration loader (policyd/config.c and policyd/config_sections.c,
 * compiled into this target with the fuzzer's instrumentation; inih is
 * Debian's library, not instrumented).
 *
 * Input: the bytes of a configuration file, written to a memfd and loaded
 * through its /proc/self/fd path as `policyd -t -c FILE` would.  Checked:
 * either a config comes back (and is freed), or NULL with an error message
 * that starts with the path and fits its buffer.  Leaks and memory errors
 * are found by ASan; paths named in the input (map files, state_dir) are
 * only read, never created.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "policyd/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];
	char err[1024];

	if (fd < 0) {
		fd = memfd_create("fuzz_config", 0);
		if (fd < 0)
			abort();
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	if (size > 1 << 20)
		return 0;
	if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	err[0] = '\0';
	struct config *c = config_load(path, err, sizeof(err));
	if (c == NULL) {
		size_t n = strnlen(err, sizeof(err));
		if (n == 0 || n == sizeof(err) || strncmp(err, path, strlen(path)) != 0)
			abort();
		return 0;
	}
	config_free(c);
	return 0;
}
