/*
 * policyd/chroot.h - running chrooted (`chroot = DIR` in [server]).
 *
 * The rule: every path in the configuration is written as seen from
 * outside (e.g. /var/spool/postfix/private/policyd).  A path policyd opens
 * after it has chrooted must lie under DIR; it is then used with DIR
 * stripped (chroot_path()).  Sockets bound before the chroot (listen,
 * control, [ndr] log_socket) and the pid_file may lie anywhere.  The
 * configuration file itself is read again on SIGHUP only when it lies
 * under DIR; otherwise a reload is refused (restart policyd) and the files
 * read only at start and by a reload (overrides maps, NDR patterns) may
 * lie anywhere too.
 */
#ifndef POLICYD_CHROOT_H
#define POLICYD_CHROOT_H

#include <stdbool.h>
#include <stddef.h>

/* Is path (absolute) at or below the directory root ("/a/b" is under
 * "/a", "/ab" is not)?  root has no trailing '/'. */
bool chroot_under(const char *root, const char *path);

/* The path to use now: path itself before chroot_enter() (or without a
 * chroot), path with the root stripped after it ("/" for the root
 * itself).  A path outside the root is returned unchanged: inside the
 * chroot it names another file (the configuration check refuses such
 * paths where they are opened; check chroot_reachable() before removing
 * one). */
const char *chroot_path(const char *path);

/* Can path be reached now (no chroot, or it lies under the root)? */
bool chroot_reachable(const char *path);

/* The root entered, or NULL. */
const char *chroot_root(void);

/*
 * For the configuration check: when the config has a chroot, is path
 * (a value of `name`) under it?  0, or -1 with "NAME = PATH lies outside
 * chroot DIR: ..." in err.  Does nothing for NULL, "" or no chroot.
 * chroot_check_path() is for paths used while running (always checked);
 * chroot_check_reread() for files read only at start and by a reload
 * (checked only when the configuration file itself lies under the chroot,
 * since otherwise a reload is refused anyway).
 */
struct config;
int chroot_check_path(const struct config *c, const char *name, const char *path, char *err,
                      size_t errsz);
int chroot_check_reread(const struct config *c, const char *name, const char *path, char *err,
                        size_t errsz);

/* An fd open on /dev/null (O_RDWR, close-on-exec) for the stdin and
 * stdout of commands: opened before the chroot (there is no /dev inside
 * Postfix's spool).  -1 if it cannot be opened. */
int chroot_devnull(void);

/* chroot(dir) and chdir("/").  Needs root.  0, or -1 with err. */
int chroot_enter(const char *dir, char *err, size_t errsz);

#endif
