//! Collecting errors, so that one build reports every mistake in an attribute rather than one
//! per build.

/// `Ok` when there are no errors, else all of them as one `syn::Error` (each keeps its span).
pub(crate) fn combine(errors: impl IntoIterator<Item = syn::Error>) -> syn::Result<()> {
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(mut first) => {
            for e in errors {
                first.combine(e);
            }
            Err(first)
        }
    }
}
