/* lib/errors.c: craft_strerror / craft_err_name generated from CRAFT_ERRNO_MAP. */
#include <check.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "craft.h"

typedef struct {
    int code;
    int enum_value;
    const char *name;
    const char *msg;
} err_row_t;

static const err_row_t table[] = {
#define ROW(name, code, msg) {code, CRAFT_##name, "CRAFT_" #name, msg},
    CRAFT_ERRNO_MAP(ROW)
#undef ROW
};

#define N_ERRORS ((int)(sizeof table / sizeof table[0]))

START_TEST(test_each_code)
{
    const err_row_t *r = &table[_i];
    ck_assert_int_lt(r->code, 0);
    ck_assert_str_eq(craft_strerror(r->code), r->msg);
    ck_assert_str_eq(craft_err_name(r->code), r->name);
    /* The enum constant has the table's value. */
    ck_assert_int_eq(r->enum_value, r->code);
    ck_assert_int_ne(strlen(r->msg), 0);
}
END_TEST

START_TEST(test_enum_values)
{
    /* Spot checks that the X-macro expanded the enum as documented. */
    ck_assert_int_eq(CRAFT_ENOTLEADER, -1);
    ck_assert_int_eq(CRAFT_ESHUTDOWN, -3);
    ck_assert_int_eq(CRAFT_EINVAL, -15);
    ck_assert_int_eq(CRAFT_EPENDING, -16);
    ck_assert_int_eq(CRAFT_EBUSY, -21);
    ck_assert_str_eq(craft_err_name(CRAFT_EBUSY), "CRAFT_EBUSY");
    ck_assert_str_eq(craft_strerror(CRAFT_ENOTLEADER), "node is not the leader");
}
END_TEST

START_TEST(test_codes_unique)
{
    for (int i = 0; i < N_ERRORS; i++) {
        for (int j = 0; j < i; j++) {
            ck_assert_int_ne(table[i].code, table[j].code);
            ck_assert_str_ne(table[i].name, table[j].name);
            ck_assert_str_ne(table[i].msg, table[j].msg);
        }
    }
}
END_TEST

START_TEST(test_success)
{
    ck_assert_str_eq(craft_strerror(0), "success");
    ck_assert_ptr_nonnull(craft_err_name(0));
    ck_assert_str_eq(craft_err_name(0), "OK");
}
END_TEST

START_TEST(test_unknown)
{
    const int unknown[] = {1, 7, -22, -100, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *msg = craft_strerror(unknown[i]);
        const char *name = craft_err_name(unknown[i]);
        ck_assert_ptr_nonnull(msg);
        ck_assert_ptr_nonnull(name);
        ck_assert_str_eq(msg, "unknown error");
        ck_assert_str_eq(name, "CRAFT_EUNKNOWN");
        /* Never confused with a real code. */
        for (int j = 0; j < N_ERRORS; j++) {
            ck_assert_str_ne(name, table[j].name);
        }
    }
}
END_TEST

static Suite *errors_suite(void)
{
    Suite *s = suite_create("errors");
    TCase *tc = tcase_create("errors");
    tcase_add_loop_test(tc, test_each_code, 0, N_ERRORS);
    tcase_add_test(tc, test_enum_values);
    tcase_add_test(tc, test_codes_unique);
    tcase_add_test(tc, test_success);
    tcase_add_test(tc, test_unknown);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(errors_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
