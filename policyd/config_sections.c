/*
 * policyd/config_sections.c - the table of module-owned config sections
 * (see config_section.h).  Adding a section touches this table only.
 */
#include "config_section.h"

#include <stddef.h>

const struct config_section *const config_sections[] = {
    NULL,
};
