/*
 * policyd/chroot.c - owns the chroot: entering it once at start (main.c,
 * after the listeners, the log, the resolver and the files read from
 * outside are open, before dropping root) and translating the paths of
 * the configuration (outside paths) into paths inside it.
 *
 * Entry points: chroot.h.  The rule is stated there; config.c and the
 * modules' section checks call chroot_check_path() for each path used
 * after the chroot, so `policyd -t` names the first one that cannot work.
 */
#include "chroot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static char chroot_dir[CHROOT_DIR_MAX]; /* "" until chroot_enter() */
static int chroot_null = -1;            /* /dev/null, opened once */

bool chroot_under(const char *root, const char *path)
{
	size_t n = strlen(root);
	if (path == NULL || path[0] != '/' || strncmp(path, root, n) != 0)
		return false;
	return path[n] == '\0' || path[n] == '/';
}

const char *chroot_path(const char *path)
{
	if (chroot_dir[0] == '\0' || path == NULL || !chroot_under(chroot_dir, path))
		return path;
	const char *in = path + strlen(chroot_dir);
	return in[0] ? in : "/";
}

bool chroot_reachable(const char *path)
{
	return chroot_dir[0] == '\0' || chroot_under(chroot_dir, path);
}

const char *chroot_root(void)
{
	return chroot_dir[0] ? chroot_dir : NULL;
}

int chroot_check_path(const struct config *c, const char *name, const char *path, char *err,
                      size_t errsz)
{
	if (c->chroot == NULL || path == NULL || path[0] == '\0')
		return 0;
	if (chroot_under(c->chroot, path))
		return 0;
	snprintf(err, errsz,
	         "%s = %s lies outside chroot %s: policyd opens it after the chroot, so it "
	         "must be under %s (paths are written as seen from outside)",
	         name, path, c->chroot, c->chroot);
	return -1;
}

int chroot_check_reread(const struct config *c, const char *name, const char *path, char *err,
                        size_t errsz)
{
	if (c->chroot == NULL || !c->chroot_reload || path == NULL || path[0] == '\0')
		return 0;
	if (chroot_under(c->chroot, path))
		return 0;
	snprintf(err, errsz,
	         "%s = %s lies outside chroot %s: a reload reads it again inside the chroot "
	         "(%s lies under %s), so it must be under %s too",
	         name, path, c->chroot, c->path, c->chroot, c->chroot);
	return -1;
}

int chroot_devnull(void)
{
	if (chroot_null < 0)
		chroot_null = open("/dev/null", O_RDWR | O_CLOEXEC);
	return chroot_null;
}

int chroot_enter(const char *dir, char *err, size_t errsz)
{
	if (geteuid() != 0) {
		snprintf(err, errsz, "chroot = %s needs policyd to start as root", dir);
		return -1;
	}
	if (strlen(dir) >= sizeof(chroot_dir)) {
		snprintf(err, errsz, "chroot = %s: path too long", dir);
		return -1;
	}
	if (chroot_devnull() < 0) {
		snprintf(err, errsz, "/dev/null: %s", strerror(errno));
		return -1;
	}
	if (chdir(dir) < 0 || chroot(dir) < 0 || chdir("/") < 0) {
		snprintf(err, errsz, "chroot %s: %s", dir, strerror(errno));
		return -1;
	}
	snprintf(chroot_dir, sizeof(chroot_dir), "%s", dir);
	return 0;
}
