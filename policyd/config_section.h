/*
 * policyd/config_section.h - sections of policyd.conf owned by other
 * modules ([anomaly], [ndr], [flags], ...).  A module describes its
 * section with one struct config_section and adds it to the table in
 * config_sections.c; config.c then parses `[NAME]` into a block of `size`
 * bytes that the module reads back with config_section_get().
 */
#ifndef POLICYD_CONFIG_SECTION_H
#define POLICYD_CONFIG_SECTION_H

#include <stdbool.h>
#include <stddef.h>

struct config;

struct config_section {
	const char *name; /* the [NAME] of the section */
	size_t size;      /* bytes of the module's config block */
	/* fill defaults (the block is zeroed before) */
	void (*defaults)(void *blk);
	/* one `name = value`; 0 or -1 with a message (the caller adds FILE:LINE) */
	int (*set)(void *blk, const char *name, const char *value, char *err, size_t errsz);
	/* after the whole file: cross-checks (may be NULL) */
	int (*check)(void *blk, const struct config *c, char *err, size_t errsz);
	/* free what set() allocated (may be NULL) */
	void (*free)(void *blk);
	/* names that take a list (NULL-terminated; may be NULL): they continue
	 * on indented lines, and set() is then called again with the whole
	 * list so far, which it must parse afresh (replacing the last one) */
	const char *const *lists;
};

/* The table (config_sections.c); NULL-terminated. */
extern const struct config_section *const config_sections[];

/* The block of section `s` in c (always present: defaults when absent from the file). */
void *config_section_get(const struct config *c, const struct config_section *s);
/* Was [NAME] present in the file? */
bool config_section_present(const struct config *c, const struct config_section *s);

#endif
