from doc_pipeline.cli import main

main()
